#!/usr/bin/env python3
"""A stand-in for kubectl that records every call and answers from a scenario (JSON).

test_deploy.py puts a `kubectl` wrapper that runs this first on PATH. Environment:
  FAKE_KUBECTL_SCENARIO  the scenario file (below)
  FAKE_KUBECTL_LOG       where each call is appended, one JSON object a line:
                         {"argv": [...], "applied": ["Kind/name", ...]}  (applied: for `apply`)
  FAKE_KUBECTL_STATE     a file keeping the per-Job poll counts between calls
  REAL_KUBECTL           the real kubectl, which renders `kustomize DIR`
  FAKE_KUBECTL_CACHE     a directory keeping each directory's render for the test run

Scenario keys (all optional):
  render_sub      [[old, new], ...] replacements in every `kustomize` output
  crds            names of the installed CRDs
  clusterissuers  {name: "True"|"False"} Ready status of existing ClusterIssuers
  secrets         {name: {key: value}} Secrets in namespace cpis
  wait            {"certificate/NAME" | "clusterissuer/NAME" | "certificate --all": exit code}
  jobs            {name: [conditions answered at poll 1, 2, ...; the last repeats]}
                  (conditions: a space-separated string of True condition types)
  logs            {job name: text}
  rollout         {deployment name: exit code}
Anything it does not know exits 99, so an unexpected call fails the test.
"""
import base64
import json
import os
import subprocess
import sys


def selector_matches(selector, labels):
    for term in selector.split(","):
        term = term.strip()
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


def option(argv, name):
    """The value of `--name=value` or `--name value` / `-n value`."""
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def positional(argv):
    out, skip = [], False
    takes_value = {"-n", "--namespace", "-f", "--filename", "-l", "--selector", "-o", "--output"}
    for a in argv:
        if skip:
            skip = False
            continue
        if a in takes_value:
            skip = True
            continue
        if a.startswith("-"):
            continue
        out.append(a)
    return out


def plural_group(kind, api_version):
    group = api_version.split("/")[0] if "/" in api_version else ""
    return kind.lower() + (f".{group}" if group else "")


def main():
    argv = sys.argv[1:]
    with open(os.environ["FAKE_KUBECTL_SCENARIO"]) as f:
        sc = json.load(f)
    record = {"argv": argv}

    def done(code=0, out="", err=""):
        with open(os.environ["FAKE_KUBECTL_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(code)

    words = positional(argv)
    verb = words[0] if words else ""

    if verb == "kustomize":
        # Rendered once per directory and test run (FAKE_KUBECTL_CACHE), then reused.
        cache = os.path.join(os.environ["FAKE_KUBECTL_CACHE"],
                             os.path.abspath(words[1]).strip("/").replace("/", "_") + ".yaml")
        if not os.path.exists(cache):
            text = subprocess.run([os.environ["REAL_KUBECTL"], "kustomize", words[1]],
                                  check=True, capture_output=True, text=True).stdout
            with open(cache + ".tmp", "w") as f:
                f.write(text)
            os.replace(cache + ".tmp", cache)
        with open(cache) as f:
            text = f.read()
        for old, new in sc.get("render_sub", []):
            text = text.replace(old, new)
        done(out=text)

    if verb == "get" and words[1:2] == ["crd"]:
        if words[2] in sc.get("crds", []):
            done(out=f"{words[2]}\n")
        done(1, err=f'Error from server (NotFound): customresourcedefinitions "{words[2]}" not found\n')

    if verb == "get" and words[1:2] == ["clusterissuer"]:
        status = sc.get("clusterissuers", {}).get(words[2])
        if status is None:
            done(1, err=f'Error from server (NotFound): clusterissuers "{words[2]}" not found\n')
        done(out=status)

    if verb == "get" and words[1:2] == ["secret"]:
        out = option(argv, "-o") or ""
        # Only the key-and-length listing is answered: anything that could print a value fails.
        if not out.startswith("go-template=") or "range $k, $v := .data" not in out or "{{$v}}" in out:
            done(97, err="fake kubectl: refusing an output format that could print Secret values\n")
        secret = sc.get("secrets", {}).get(words[2])
        if secret is None:
            done(1, err=f'Error from server (NotFound): secrets "{words[2]}" not found\n')
        lines = "".join(f"{k} {len(base64.b64encode(v.encode()))}\n" for k, v in sorted(secret.items()))
        done(out=lines)

    if verb == "apply":
        import yaml  # only here: most calls are answered without it

        with open(option(argv, "-f")) as f:
            objs = [d for d in yaml.safe_load_all(f) if d]
        selector = option(argv, "-l")
        if selector:
            objs = [d for d in objs if selector_matches(selector, d["metadata"].get("labels") or {})]
        record["applied"] = [f"{d['kind']}/{d['metadata']['name']}" for d in objs]
        if option(argv, "-o") == "name":
            done(out="".join(f"{plural_group(d['kind'], d['apiVersion'])}/{d['metadata']['name']}\n" for d in objs))
        done(out="".join(f"{d['kind'].lower()}/{d['metadata']['name']} configured\n" for d in objs))

    if verb == "delete" and words[1:2] == ["job"]:
        done()

    if verb == "wait":
        target = " ".join(words[1:]) + (" --all" if "--all" in argv else "")
        code = sc.get("wait", {}).get(target, 0)
        done(code, err="" if code == 0 else f"error: timed out waiting for the condition on {target}\n")

    if verb == "get" and words[1:2] == ["job"] and len(words) == 2:
        done(out="".join(f"job.batch/{j}\n" for j in sc.get("jobs", {})))

    if verb == "get" and words[1].startswith("job.batch/"):
        name = words[1].split("/", 1)[1]
        state_file = os.environ["FAKE_KUBECTL_STATE"]
        state = json.load(open(state_file)) if os.path.exists(state_file) else {}
        answers = sc.get("jobs", {}).get(name, ["Complete"])
        n = state.get(name, 0)
        state[name] = n + 1
        with open(state_file, "w") as f:
            json.dump(state, f)
        done(out=answers[min(n, len(answers) - 1)])

    if verb == "logs":
        name = words[1].split("/", 1)[1]
        done(out=sc.get("logs", {}).get(name, ""))

    if verb == "rollout" and words[1:2] == ["status"]:
        name = words[2].split("/", 1)[1]
        code = sc.get("rollout", {}).get(name, 0)
        done(code, out=f'deployment "{name}" successfully rolled out\n' if code == 0 else "",
             err="" if code == 0 else f'error: deployment "{name}" exceeded its progress deadline\n')

    done(99, err=f"fake kubectl: unsupported call {argv}\n")


if __name__ == "__main__":
    main()
