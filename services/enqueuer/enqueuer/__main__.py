from enqueuer.app import MIGRATIONS, SCHEMA, create_app
from enqueuer.settings import EnqueuerSettings
from shared.runner import main

main("enqueuer", SCHEMA, MIGRATIONS, EnqueuerSettings, create_app)
