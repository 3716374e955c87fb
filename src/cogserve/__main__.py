from cogserve.cli import app

app()
