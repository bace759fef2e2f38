"""Running things: child processes (started, awaited, stopped by pid), /proc readings, sampling."""
