"""The moegs command line.

Its OpenMP workers spin briefly between parallel regions, where the library waits passively
(`moegs.openmp_waiting`): set here, before any command module loads torch.

Under a file-size limit (``ulimit -f``) CPython writes ``.pyc`` files cut short at the limit and
later imports of those modules fail; the CLI then writes no bytecode at all.
"""

import sys

from moegs.openmp_waiting import spin_briefly

spin_briefly()  # before the commands' modules load torch (moegs.openmp_waiting says why)

try:
    import resource
except ImportError:  # not POSIX: no file-size limits to guard against
    resource = None

if resource is not None and resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
    sys.dont_write_bytecode = True
