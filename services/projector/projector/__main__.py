import sys

from projector.app import MIGRATIONS, SCHEMA, create_app
from projector.cli import COMMANDS
from projector.cli import main as operator_main
from projector.settings import ProjectorSettings
from shared.runner import main

# Guarded: a rebuild's worker processes are spawned and import this module again.
if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.exit(operator_main(sys.argv[1:]))
    main("projector", SCHEMA, MIGRATIONS, ProjectorSettings, create_app)
