from threezone.cli.main import app

app()
