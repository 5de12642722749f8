from sender.app import MIGRATIONS, SCHEMA, create_app
from sender.settings import SenderSettings
from shared.runner import main

main("sender", SCHEMA, MIGRATIONS, SenderSettings, create_app)
