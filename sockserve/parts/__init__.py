"""Server parts: what the command adds to a framework server, one concern per class.

Each part is a small class that extends documented steps of `BaseServer` (server_bind,
get_request, verify_request, handle_ready, ...) and calls `super()`, as `ThreadingMixIn`
replaces `process_request`. `compose.make_server` picks the parts a configuration needs and
builds the class with `type()`, in this order (the first part sees a step first):

    ReportingPart           reporting.py     connected, handler errors, the monitor's poll
    PinningPart             pinning.py       the loop's thread and those it starts on one CPU
    AcceptingThreadsPart    acceptors.py     handler threads that accept for themselves
    LeanDatagramPart        datagrams.py     builtins answer datagrams on the loop thread
    AcceptBatchPart         accept_batch.py  several waiting connections per loop wake-up
    ChildClosesListenerPart listener.py      a forked child closes its copy of the listener
    NodelayListenerPart     listener.py      TCP_NODELAY once on the listener, for the builtins
    BannerPart              banner.py        --banner sent on connect, before the handler
    DispatchRefusalPart     backoff.py       a thread or child that cannot start: refuse, go on
    ProgramGroupsPart       program_groups.py  --exec, fork mode: a gone child's programs killed
    RequestsPart            requests.py      counted, limited (--once, --max-requests), stoppable
    IdleTimeoutPart         idle.py          --timeout on every connection
    WatchPart               watching.py      each request's socket watched (-vv) or counted
    ReplySourcePart         reply_source.py  on 0.0.0.0 or [::], replies from the arrival address
    WholeDatagramPart       whole_datagrams.py  unix datagrams read whole, past 64 KiB
    AcceptBackoffPart       backoff.py       out of descriptors: pause accepts, then go on
    UnixFilePart            unix_file.py     the socket file: stale check, --mode, removal

Every server has RequestsPart and AcceptBackoffPart (and UnixFilePart on a unix path); a
part that is not needed is not in the bases. A new capability (TLS, faults, access rules)
is a new part of the same kind.
"""
