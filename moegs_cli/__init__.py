"""The moegs command line.

Under a file-size limit (``ulimit -f``) CPython writes ``.pyc`` files cut short at the limit and
later imports of those modules fail; the CLI then writes no bytecode at all.
"""

import sys

try:
    import resource
except ImportError:  # not POSIX: no file-size limits to guard against
    resource = None

if resource is not None and resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
    sys.dont_write_bytecode = True
