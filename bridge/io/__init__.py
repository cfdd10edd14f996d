"""The protocol channel and the threads that own it: below the serving loop."""
