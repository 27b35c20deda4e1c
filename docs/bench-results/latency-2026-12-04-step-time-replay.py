"""Offline replay of each pod's virtual prefill queue: the queue before dc76074 ("step join")
against the queue with the pod's engine step time ("step time").

    python3 docs/bench-results/latency-2026-12-04-step-time-replay.py \\
        docs/bench-results/latency-states-2026-12-03-eve/*.state.json.gz

Input and method as in latency-2026-12-03-step-join-replay.py (whose `load` this reuses): each
pod's measured TTFT observations give the requests' features, dispatch and first-byte times;
the virtual queue is rebuilt from those events and predicts each TTFT.

"step time": the pod's step time base + per-token x new k tokens is fitted on the run's own
back-to-back steps (first bytes at a step end of requests all sent before the previous step
end; epp/latency/steps.py). That is a fit in hindsight: online, the pod learns it as the run
goes. A request that starts a step is charged the step time and predicted the wait plus it;
one that joins the last step is charged its tokens' share; the head of the queue is due at its
step's end (its charge and its joiners' shares); the last step takes requests until the step
ahead of it has its first byte. A request that finds no queue is predicted as recorded.
"""

import gzip
import importlib.util
import json
import statistics
import sys

spec = importlib.util.spec_from_file_location(
    'rp', __file__.replace('2026-12-04-step-time-replay.py', '2026-12-03-step-join-replay.py'))
rp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rp)
NEW = 1


def step_fit(reqs):
    by_fb = sorted(reqs, key=lambda r: r['fb'])
    groups = []
    for r in by_fb:
        if groups and abs(r['fb'] - groups[-1][-1]['fb']) < 0.02:
            groups[-1].append(r)
        else:
            groups.append([r])
    pts = []
    for prev, g in zip(groups, groups[1:]):
        f0 = prev[0]['fb']
        if max(r['disp'] for r in g) < f0:
            tok = sum(r['x'][NEW] for r in g)
            if tok < 8.0:
                pts.append((tok, g[0]['fb'] - f0))
    if len(pts) < 5:
        return None
    # least squares dur = a + b tok, weights 1/dur^2 (relative error)
    sw = sx = sy = sxx = sxy = 0.0
    for x, y in pts:
        w = 1.0 / (y * y)
        sw += w
        sx += w * x
        sy += w * y
        sxx += w * x * x
        sxy += w * x * y
    det = sw * sxx - sx * sx
    if det <= 0:
        return None
    a = (sy * sxx - sx * sxy) / det
    b = (sw * sxy - sx * sy) / det
    return a, b, len(pts)


def replay(model, pooled, reqs, rule, fit):
    floor, cover = model['ttftFloor'], model['cover']
    def coefficients(ktok, queue):
        if model['ttft'] is not None and ktok <= 1.25 * cover[0] + 0.5 and queue <= 1.25 * cover[1] + 0.5:
            return model['ttft'], 1.0
        return pooled['ttft'], model['ttftSpeed']
    def service0(ktok):
        c, speed = coefficients(ktok, 0.0)
        return max(floor, speed * max(0.0, c[0] + c[NEW] * ktok))
    def share0(ktok):
        c, speed = coefficients(ktok, 0.0)
        return speed * max(0.0, c[NEW] * ktok)
    def own(x, queue):
        c, speed = coefficients(x[NEW], queue)
        rest = list(x)
        rest[2] = rest[3] = 0.0
        return speed * max(0.0, sum(a * b for a, b in zip(c, rest)))
    use_fit = fit is not None and rule == 'step time'
    if use_fit:
        a, b, _ = fit
        def service(k):
            return max(floor, a + b * k)

        def share(k):
            return max(0.0, b * k)
    else:
        service, share = service0, share0
    events = sorted([(r['disp'], 1, i) for i, r in enumerate(reqs)] + [(r['fb'], 0, i) for i, r in enumerate(reqs)])
    clear = step_start = head_since = 0.0
    opener = -1
    gid = 0
    group = {}
    order, charged, predicted = [], {}, {}
    for t, is_dispatch, i in events:
        r = reqs[i]
        if is_dispatch:
            queue = max(0.0, clear - t) if clear else 0.0
            if clear and order:
                if rule == 'step time':
                    g0 = group[order[0]]
                    S = sum(charged[j] for j in order if group[j] == g0)
                else:
                    S = charged[order[0]]
                late = t - head_since - S
                if late > 0 and S > 0:
                    queue = late * min(1.0, late / S) + sum(charged[j] for j in order) - S
            joins = bool(order) and step_start > t
            if rule == 'step time' and order and not joins and opener in order and order[0] != opener:
                joins = True
            if joins:
                charge = share(r['x'][NEW])
                predicted[i] = max(floor, queue + charge)
            else:
                charge = service(r['x'][NEW])
                if use_fit and order:
                    predicted[i] = max(floor, queue + charge)
                else:
                    predicted[i] = max(floor, queue + own(r['x'], queue))
            start = max(t, clear)
            if not joins:
                step_start = start
                opener = i
                gid += 1
            group[i] = gid
            charged[i] = charge
            clear = start + charge
            if not order:
                head_since = t
            order.append(i)
        elif i in order:
            before = clear
            if order[0] == i:
                clear = t + sum(charged[j] for j in order[1:])
                order.pop(0)
                head_since = t
            else:
                clear = max(t, clear - charged[i])
                order.remove(i)
            step_start = min(step_start + clear - before, clear)
            if not order:
                clear = step_start = 0.0
    return statistics.median(abs(predicted[i] - r['y']) / r['y'] for i, r in enumerate(reqs))

RULES = ('step join', 'step time')


def main(paths: list[str]) -> None:
    table: dict[str, list[float]] = {k: [] for k in ('recorded',) + RULES}
    slow: dict[str, list[float]] = {k: [] for k in table}
    print('| state | pod | TTFTs | recorded | ' + ' | '.join(RULES) + ' | step time fit (s, s per k tokens, steps) |')
    print('|---|---|---|---|' + '---|' * len(RULES) + '---|')
    for path in sorted(paths):
        with gzip.open(path) as f:
            pods = sorted(k for k in json.load(f)['models'] if k)
        for pod in pods:
            model, pooled, reqs = rp.load(path, pod)
            if len(reqs) < 8:
                continue
            fit = step_fit(reqs)
            row = {'recorded': statistics.median(abs(r['recorded'] - r['y']) / r['y'] for r in reqs)}
            for rule in RULES:
                row[rule] = replay(model, pooled, reqs, rule, fit)
            for k, v in row.items():
                table[k].append(v)
                if pod.endswith('vllm-0'):
                    slow[k].append(v)
            fs = f"{fit[0]:.3f} + {fit[1]:.3f} x k, {fit[2]}" if fit else 'too few steps'
            print(f"| {path.split('/')[-1].split('.')[0]} | {pod} | {len(reqs)} | "
                  + ' | '.join(f"{row[k]:.0%}" for k in table) + f" | {fs} |")
    print()
    print('| TTFT MAPE | ' + ' | '.join(table) + ' |')
    print('|---|' + '---|' * len(table))
    for label, values in (('all pods, median', table), ('slow pod (vllm-0), median', slow)):
        print(f'| {label} | ' + ' | '.join(f'{statistics.median(v):.0%}' for v in values.values()) + ' |')
    for label, values in (('all pods, max', table), ('slow pod, max', slow)):
        print(f'| {label} | ' + ' | '.join(f'{max(v):.0%}' for v in values.values()) + ' |')
    print('| pods over 20% | ' + ' | '.join(str(sum(x > 0.2 for x in v)) for v in table.values()) + ' |')


if __name__ == '__main__':
    main(sys.argv[1:])
