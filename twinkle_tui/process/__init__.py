"""Training runs as processes: launch, supervise, pause, resume, stop."""
