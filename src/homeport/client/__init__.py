"""The editor side: the API client, adapters, chat and inline strategies, history."""
