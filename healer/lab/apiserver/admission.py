"""The PodSecurity admission plugin, as far as the lab needs it: a pod created in a namespace
labelled ``pod-security.kubernetes.io/enforce`` is refused (``403 Forbidden``, the real
plugin's message) when it breaks the ``baseline`` or ``restricted`` Pod Security Standard.

The checks are the standards' common ones (host namespaces, privileged, added capabilities,
hostPath volumes, host ports; for restricted also privilege escalation, dropped capabilities,
non-root, seccomp and volume types); the exotic ones (AppArmor, SELinux, sysctls, /proc
mount) are not modelled.
"""

from __future__ import annotations

from healer.lab.apiserver.errors import ApiError
from healer.lab.apiserver.resources import Obj

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")
# Capabilities the baseline standard allows to add (container runtimes' defaults).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def _containers(spec: Obj) -> list[Obj]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]


def _names(containers: list[Obj]) -> str:
    quoted = ", ".join(f'"{c.get("name", "")}"' for c in containers)
    return f"container {quoted}" if len(containers) == 1 else f"containers {quoted}"


def baseline_violations(spec: Obj) -> list[str]:
    out: list[str] = []
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        out.append(f"host namespaces ({', '.join(host)})")
    containers = _containers(spec)
    privileged = [c for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if privileged:
        out.append(
            f"privileged ({_names(privileged)} must not set securityContext.privileged=true)"
        )
    added = sorted(
        {
            cap
            for c in containers
            for cap in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
        }
        - BASELINE_CAPABILITIES
    )
    if added:
        out.append(f"non-default capabilities (capabilities {added} must not be added)")
    host_path = [v.get("name", "") for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_path:
        out.append(
            f"hostPath volumes (volume{'s' if len(host_path) > 1 else ''} "
            + ", ".join(f'"{n}"' for n in host_path)
            + ")"
        )
    ports = [c for c in containers if any(p.get("hostPort") for p in c.get("ports") or [])]
    if ports:
        out.append(f"hostPort ({_names(ports)} uses hostPort)")
    return out


def restricted_violations(spec: Obj) -> list[str]:
    out = baseline_violations(spec)
    containers = _containers(spec)
    pod_sc = spec.get("securityContext") or {}

    def sc(c: Obj) -> Obj:
        return c.get("securityContext") or {}

    escalating = [c for c in containers if sc(c).get("allowPrivilegeEscalation") is not False]
    if escalating:
        out.append(
            f"allowPrivilegeEscalation != false ({_names(escalating)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    undropped = [
        c for c in containers if "ALL" not in ((sc(c).get("capabilities") or {}).get("drop") or [])
    ]
    if undropped:
        out.append(
            f"unrestricted capabilities ({_names(undropped)} must set "
            'securityContext.capabilities.drop=["ALL"])'
        )
    root = [
        c
        for c in containers
        if sc(c).get("runAsNonRoot") is not True
        and not (pod_sc.get("runAsNonRoot") is True and sc(c).get("runAsNonRoot") is None)
    ]
    if root:
        out.append(
            f"runAsNonRoot != true (pod or {_names(root)} must set "
            "securityContext.runAsNonRoot=true)"
        )
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    no_seccomp = [
        c
        for c in containers
        if ((sc(c).get("seccompProfile") or {}).get("type") or pod_seccomp)
        not in ("RuntimeDefault", "Localhost")
    ]
    if no_seccomp:
        out.append(
            f"seccompProfile (pod or {_names(no_seccomp)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
        )
    odd = [
        v.get("name", "")
        for v in spec.get("volumes") or []
        if "hostPath" not in v and not (set(v) - {"name"}) <= RESTRICTED_VOLUMES
    ]
    if odd:
        out.append("restricted volume types (volumes " + ", ".join(f'"{n}"' for n in odd) + ")")
    return out


def admit_pod(namespace: Obj | None, pod: Obj) -> None:
    """Raise the plugin's ``403`` when ``pod`` breaks its namespace's enforced level."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(ENFORCE_LABEL)
    if level not in ("baseline", "restricted"):
        return
    spec = pod.get("spec") or {}
    found = baseline_violations(spec) if level == "baseline" else restricted_violations(spec)
    if found:
        name = (pod.get("metadata") or {}).get("name", "")
        raise ApiError(
            403,
            f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": '
            + ", ".join(found),
        )
