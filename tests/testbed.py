"""``python -m tests.testbed up|down|status``: the testbed's command, kept here for its callers
(scripts/test.sh, CI, scripts outside the repository).  The testbed itself is testkit/testbed.py,
shared by tests/ and bench/.
"""

import sys

from testkit.testbed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
