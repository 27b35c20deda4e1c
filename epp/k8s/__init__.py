"""Kubernetes mode: the Datastore fed from the API server, leader election, config reload.

- `cli`: `add_k8s_arguments(parser)` and `KubernetesOptions` (flags of `epp serve`).
- `source`: `KubernetesSource` (InferencePool, Pods, InferenceObjectives -> Datastore).
- `reflector`: list + watch of one collection (resourceVersion, bookmarks, 410 -> relist).
- `leader`: `LeaderElector` on a coordination.k8s.io/v1 Lease.
- `config_watch`: `ConfigFileWatcher` for the EndpointPickerConfig mounted from a ConfigMap.
- `resources`: Kubernetes JSON -> datastore types (the API shapes live here).
- `testing`: `FakeApiServer`, an API-server stand-in on 127.0.0.1 for tests.
"""
