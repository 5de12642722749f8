from dlr_ingest.app import create_app
from dlr_ingest.settings import DlrIngestSettings
from shared.runner import main

main("dlr-ingest", "", (), DlrIngestSettings, create_app)
