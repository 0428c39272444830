"""`chargpt serve`: the local page and the OpenAI-compatible API. `app` holds the routes and the server, `checks`
what every request must pass, `runs` the runs served, `generation` completions and their streams."""
