"""The use-case layer: one function per operation, called by its command and by its Prefect task.

A stage takes a :class:`~drywall_core.stages.context.Context` (settings, artifact store, dataset
registry, model registry, event sink and reporter, built once) and returns a typed record. It holds
the operation's rules; a command parses its options, calls one stage and prints the record; a task
reads its parameters, calls the same stage and shows the record in the Prefect UI. Retries stay at
the I/O boundaries (the store's client, the Roboflow SDK, the event sink), so a stage is safe to
run again.
"""
