"""Everything a person touches: the command line, settings, logging, telemetry, the embedded mode.

    cli/        the `miniflow` command, one module per command group; errors -> exit codes in one place
    settings    typed settings from the environment (read only by entry points)
    views       runs, steps, schedules and dead letters as plain data and as tables
    embedded    the embedded mode: every role in one process (`miniflow run`, the unit tests)
    worker      the long-running processes: `miniflow worker` and `miniflow timer`
    processes   launching and supervising those processes from another program (tests, benchmarks)
    polling     waiting for a condition with a deadline
    logging     log set-up and redaction
    telemetry   OpenTelemetry set-up from the OTEL_* variables
"""
