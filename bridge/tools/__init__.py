"""Host-side tools: a Python host client, transcripts, --record and replay."""
