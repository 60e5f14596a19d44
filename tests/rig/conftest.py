from tests.rig.fixtures import *  # noqa: F401,F403
