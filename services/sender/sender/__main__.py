import sys

from sender.app import MIGRATIONS, SCHEMA, create_app
from sender.settings import SenderSettings
from shared.runner import main

if sys.argv[1:2] == ["ambiguous"]:
    from sender.cli import main as operator_command

    sys.exit(operator_command(sys.argv[2:]))
main("sender", SCHEMA, MIGRATIONS, SenderSettings, create_app)
