"""Fleet administration over HTTP: admin tokens, the JSON admin API and the web console."""
