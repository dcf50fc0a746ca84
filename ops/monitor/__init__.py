"""The monitors (issue 14): each view is one function that the CLI, the HTTP API and the web UI call.

    workers    the workers registry: every worker, timer and API process, alive, late, gone or stopped
    queues     the queue monitor: depth, ready vs unacked, consumers, rates (passive declares, or the
               management API when it is enabled)
    why        "why isn't my step running?" for one step
    results    the result monitor: outcomes, durations, queue wait, attempts and errors over a window
    snapshot   everything `miniflow monitor` shows at once, and the scrape-time Prometheus gauges
"""
