"""The `governor` command line."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from governor import __version__, template_layout
from governor import config as config_mod
from governor import log as log_mod

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="governor",
        description="Keep a PostgreSQL cluster highly available: one governor runs beside each "
                    "PostgreSQL server; they elect a leader through a lock in etcd, the leader's "
                    "server is the primary and the others stream from it.",
        epilog="CONFIG is a YAML file, or a directory whose *.yml files are merged in name order "
               "(later files win), e.g. /etc/governor. Exit codes: 0 clean stop, 1 failure, "
               "2 invalid configuration.")
    p.add_argument("config", metavar="CONFIG", help="configuration file or directory")
    p.add_argument("--validate-config", action="store_true",
                   help="check the configuration, print every problem found, and exit (0 valid, 2 not)")
    p.add_argument("--daemonize", action="store_true",
                   help="detach and run in the background (hosts without systemd); use with --pidfile")
    p.add_argument("--pidfile", help="with --daemonize: write the daemon's PID here, removed at exit")
    p.add_argument("--log-file", help="write the log to this file instead of standard error")
    p.add_argument("--fence", action="store_true",
                   help="for systemd's ExecStopPost: if $SERVICE_RESULT is not 'success' (watchdog "
                        "timeout, crash), stop the local PostgreSQL immediately, then exit; a standby of a "
                        "member that held no leader lock is left running")
    p.add_argument("--no-supervisor", action="store_true",
                   help="outside systemd, governor runs as two processes: the HA loop and a small parent that "
                        "stops PostgreSQL if the loop freezes or dies while it holds the leader lock; this "
                        "runs the loop alone, and nothing fences a frozen loop (under systemd the watchdog and "
                        "the --fence step do that job)")
    p.add_argument("--version", action="version", version=f"governor {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"governor: invalid configuration ({len(exc.problems)} problem"
              f"{'s' if len(exc.problems) != 1 else ''}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.validate_config:
        for warning in cfg.warnings:
            print(f"governor: note: {warning}", file=sys.stderr)
        print(f"{args.config}: configuration is valid (member {cfg.postgresql.name}, scope {cfg.etcd.scope})")
        return EXIT_OK
    parent = template_layout.missing_data_dir_parent(cfg.postgresql.data_dir)
    if parent and not args.fence:
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            print(f"governor: cannot create {parent}, the parent of postgresql.data_dir: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_CONFIG
    if args.fence:
        log_mod.setup(cfg.log_level, args.log_file, fmt=cfg.log_format)
        from governor.fence import fence

        return fence(cfg)
    if args.daemonize:
        return daemonize(cfg, args)
    log_mod.setup(cfg.log_level, args.log_file, fmt=cfg.log_format)
    return run(cfg, args)


def run(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """The HA loop, supervised by a parent process unless systemd supervises it (supervisor.py)."""
    from governor.daemon import Governor
    from governor.supervisor import supervise, under_systemd

    if args.no_supervisor and not under_systemd():
        logging.getLogger("governor").warning(
            "--no-supervisor: no process outside the HA loop's fences PostgreSQL should that process freeze "
            "(SIGSTOP, a hung interpreter): only the replicas' refusal to promote beside a primary that still "
            "takes writes remains; if it dies, the kernel still stops a PostgreSQL it started")
    if args.no_supervisor or under_systemd():
        return Governor(cfg).run()
    return supervise(cfg.postgresql.data_dir, lambda report: Governor(cfg, report=report).run())


def daemonize(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Classic daemon: detach with python-daemon, hold a PID file, log to a file or syslog."""
    try:
        import daemon
        import daemon.pidfile
    except ImportError:
        print("governor: --daemonize needs the Python module daemon, which is not installed (Debian: python3-daemon;"
              " EL: python3-daemon)", file=sys.stderr)
        return EXIT_CONFIG

    for option, path in (("--pidfile", args.pidfile), ("--log-file", args.log_file)):
        problem = _unwritable_dir(path) if path else None
        if problem:     # said here: once detached, nobody would see it
            print(f"governor: {option} {path}: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    pidfile = daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(args.pidfile), acquire_timeout=1) \
        if args.pidfile else None
    if pidfile is not None and pidfile.is_locked():
        print(f"governor: {args.pidfile} is held by PID {pidfile.read_pid()}; is governor already running?",
              file=sys.stderr)
        return EXIT_FAILURE
    log_file = os.path.abspath(args.log_file) if args.log_file else None
    context = daemon.DaemonContext(pidfile=pidfile, working_directory="/", umask=0o027, signal_map={},
                                   detach_process=True)
    with context:
        log_mod.setup(cfg.log_level, log_file, syslog=log_file is None, fmt=cfg.log_format)
        return run(cfg, args)


def _unwritable_dir(path: str) -> Optional[str]:
    """Why a file cannot be created at `path` by this user, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return (f"the directory {directory} does not exist (/run/postgresql, PostgreSQL's own, is writable "
                "by postgres; or create it)")
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory {directory} is not writable by uid {os.geteuid()}"
    return None


if __name__ == "__main__":
    sys.exit(main())
