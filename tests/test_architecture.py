"""The functional core stays pure: the decision modules reach no I/O module, not even through
another governor module. Read with `ast` from the source, so an import hidden in a function
counts too."""
from __future__ import annotations

import ast
import os
import re
from typing import Dict, List, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PURE = ("governor.ha", "governor.hatypes", "governor.race", "governor.sync", "governor.cluster", "governor.dynamic",
        "governor.settings", "governor.pgparams", "governor.pgvalue", "governor.backoff", "governor.slots",
        "governor.failsafe", "governor.failsafelist", "governor.upgrade", "governor.cluster_settings")
IO_MODULES = {"psycopg2", "etcd", "urllib3", "urllib", "http", "socket", "ssl", "select", "subprocess", "os",
              "shutil", "glob", "threading", "yaml", "sdnotify", "prometheus_client", "daemon", "fcntl",
              "signal", "ctypes"}


def module_file(name: str) -> str:
    path = os.path.join(REPO, *name.split("."))
    return path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")


def imports_of(name: str) -> Set[str]:
    with open(module_file(name)) as fh:
        tree = ast.parse(fh.read())
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "governor":
                found.update(f"governor.{alias.name}" for alias in node.names)
    return found


def reach(name: str, graph: Dict[str, Set[str]]) -> Dict[str, str]:
    """Every module reachable from `name`, each with the governor module that imports it."""
    seen: Dict[str, str] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in graph:
            graph[current] = imports_of(current)
        for imported in graph[current]:
            if imported in seen:
                continue
            seen[imported] = current
            if imported.startswith("governor.") and os.path.exists(module_file(imported)):
                todo.append(imported)
    return seen


def test_pure_modules_reach_no_io_module():
    graph: Dict[str, Set[str]] = {}
    problems = []
    for pure in PURE:
        for imported, by in sorted(reach(pure, graph).items()):
            if imported.split(".")[0] in IO_MODULES:
                problems.append(f"{pure} reaches {imported} (imported by {by})")
    assert not problems, "\n".join(problems)


def test_the_check_itself_sees_an_io_import():
    assert "subprocess" in reach("governor.postgres.catalogue", {})
    assert "governor.settings" in reach("governor.dynamic", {})


def test_controls_and_sync_manager_see_the_daemon_only_through_narrow_ports():
    graph: Dict[str, Set[str]] = {}
    for module in ("governor.controls", "governor.syncrep", "governor.ports"):
        assert "governor.daemon" not in reach(module, graph), f"{module} reaches governor.daemon"


MODULE_LINES_MAX = 410     # "about 400" (issue 34); the largest today: dcs/etcd3.py, daemon.py


def test_no_module_grows_past_what_one_reader_holds_in_mind():
    """Small modules with one job: the etcd v3 adapter is the largest and stays under the limit."""
    too_long = {}
    for root, _dirs, files in os.walk(os.path.join(REPO, "governor")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as fh:
                    lines = sum(1 for _ in fh)
                if lines > MODULE_LINES_MAX:
                    too_long[os.path.relpath(path, REPO)] = lines
    assert not too_long, f"modules over {MODULE_LINES_MAX} lines: {too_long}"


def test_no_thread_subclass_shadows_what_threading_thread_keeps_on_itself():
    """Python 3.13 keeps the thread's handle in `self._handle`: a subclass method of that name was
    replaced by it, and the etcd watch thread died on Debian 13 ("'_ThreadHandle' object is not
    callable"). Names Thread uses on 3.9 to 3.13 are not for subclasses."""
    import importlib
    import inspect
    import pkgutil
    import threading

    import governor
    internal = set(vars(threading.Thread())) | {n for n in vars(threading.Thread) if n.startswith("_")}
    internal |= {"_handle", "_os_thread_handle", "_delete", "_reset_internal_locks", "_wait_for_tstate_lock"}
    clashes = []
    for info in pkgutil.walk_packages(governor.__path__, "governor."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, threading.Thread) and cls.__module__ == module.__name__:
                assigned = set(re.findall(r"self\.(_\w+)\s*[:=]", inspect.getsource(cls)))
                own = set(vars(cls)) | assigned
                clashes += [f"{cls.__module__}.{name}.{attr}" for attr in sorted(own & internal)
                            if not attr.startswith("__")]
    assert not clashes, clashes


def governor_import_graph() -> Dict[str, Set[str]]:
    """Every governor module -> the governor modules it imports, wherever the import stands (in a
    function, under TYPE_CHECKING)."""
    modules = {}
    for root, _dirs, files in os.walk(os.path.join(REPO, "governor")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


def import_circles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[Set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(group)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_not_even_a_type_only_one():
    """Modules that need the daemon type against a port (ports.py, or the Protocol their own
    module declares: syncrep.SyncHost, controls.ControlHost), never against governor.daemon."""
    circles = import_circles(governor_import_graph())
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def test_the_circle_finder_sees_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


# The layers, lowest first: a module imports modules of its own layer or of lower ones only.
# docs/architecture.md ("Layers") lists the same; a new module must be placed here.
LAYERS = {
    "core": "the decision and the cluster model, pure (time through the clock port): what to do, never doing it",
    "config": "files and settings read, checked and explained; what the installed PostgreSQL accepts",
    "adapters": "etcd, PostgreSQL, HTTP API, metrics, systemd, the peers, the fences that do not depend on the loop",
    "node": "the loop and its executors: observe, decide, act, publish, wired through ports",
    "entry": "the command lines: governor and governorctl (and what only they use)",
}
LAYER_OF = {
    "core": "governor ha hatypes race sync cluster failsafe failsafelist slots standby restarts upgrade upgrade_plan "
            "backoff memory clock settings cluster_settings dynamic pgparams pgvalue wakeups",
    "config": "config checker configfiles listeners passwords archive callbacks apiauth template_layout reference "
              "safe_yaml bindir majorpaths repltls postgres.catalogue",
    "adapters": "dcs dcs.base dcs.errors dcs.etcd2 dcs.etcd3 dcs.keys dcs.onecluster dcs.rotation dcs.store "
                "dcs.v2probe dcs.v3cache dcs.v3json dcs.v3lease postgres postgres.bootstrap postgres.controller "
                "postgres.clusterconf postgres.controllers postgres.datadir postgres.disk postgres.lifeline "
                "postgres.remote postgres.server "
                "api api_seed audit metrics systemd log peers status upgrade_seed upgrade_probe upgrade_cleanup fence "
                "watchdog watchdogfeed lockfence supervisor",
    "node": "daemon uniquename observe publish reconfigure shutdown sleeping vouch leaderlock syncrep controls ports "
            "actions actions.base actions.failsafe actions.leader actions.lock actions.roles actions.run actions.setup "
            "actions.upgrade actions.upgrade_layout actions.upgrade_link",
    "entry": "__main__ cli ctl ctl_common ctl_config ctl_generate ctl_instance ctl_members ctl_patroni ctl_query "
             "ctl_standby ctl_switchover ctl_upgrade ctl_view patroni_config patroni_keys",
}


def layer_of() -> Dict[str, int]:
    order = list(LAYERS)
    return {("governor" if m == "governor" else f"governor.{m}"): order.index(layer)
            for layer, names in LAYER_OF.items() for m in names.split()}


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones():
    graph, layers, names = governor_import_graph(), layer_of(), list(LAYERS)
    assert set(graph) == set(layers), (f"modules without a layer: {sorted(set(graph) - set(layers))}; "
                                       f"layers naming no module: {sorted(set(layers) - set(graph))}")
    upward = [f"{m} ({names[layers[m]]}) imports {t} ({names[layers[t]]})"
              for m in sorted(graph) for t in sorted(graph[m]) if layers[t] > layers[m]]
    assert not upward, "\n".join(upward)


def test_the_pure_modules_are_all_in_the_core_layer():
    core = {m for m, i in layer_of().items() if i == 0}
    assert set(PURE) <= core, sorted(set(PURE) - core)


def test_docs_list_the_layers_as_the_test_has_them():
    with open(os.path.join(REPO, "docs", "architecture.md")) as fh:
        doc = fh.read()
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for layer, names in LAYER_OF.items():
        line = next((ln for ln in section.splitlines() if ln.startswith(f"| {layer} |")), "")
        listed = set(re.findall(r"`([a-z0-9_.]+)`", line))
        differ = sorted(listed ^ set(names.split()))
        assert not differ, f"docs/architecture.md's {layer} row differs in: {differ}"
