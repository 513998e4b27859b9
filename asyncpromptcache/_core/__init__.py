"""The pure core below every room: the error tree, number checks, secrets and the one redactor,
the strict JSON door, sealed values, the logging stand-in, and the event-loop runtime (the
hosted task group). No I/O and no import of any other room."""
