"""The ``moegs view`` web viewer: browser cameras -> our cameras (``camera``), one picture per
(camera, time, mode) (``frames``), and the viser server with its controls and render loop (``server``)."""
