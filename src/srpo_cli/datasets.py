"""Getting datasets into the local Minari store: remote fetch, the built-in default, D4RL files, rollouts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DEFAULT_DATASET
from .data import check_dataset_id
from .errors import RuntimeFailure, UsageError

# D4RL's reference returns (random, expert), as in SRPO_SPEC.md.
D4RL_REF = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "antmaze": (0.0, 1.0),
}

# The built-in default: Pendulum-v1 rolled out by a scripted energy-pumping swing-up + PD balance controller,
# half the time replaced by a uniformly random torque and always perturbed by Gaussian noise, so the data sit
# near the middle of the random..controller range: a "medium" dataset that SRPO should beat.
DEFAULT_ENV = "Pendulum-v1"
DEFAULT_EPISODES = 200
DEFAULT_NOISE = 0.8
DEFAULT_RANDOM_PROB = 0.5


def local_ids() -> list[str]:
    import minari

    recover_store()
    return sorted(minari.list_local_datasets())


def missing_dataset_error(dataset_id: str, local: list[str] | None = None) -> RuntimeFailure:
    local = sorted(local if local is not None else local_ids())
    have = ", ".join(local) if local else "none"
    store = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
    return RuntimeFailure(
        f"Dataset '{dataset_id}' is not in the local Minari store ({store}); local datasets: {have}.",
        f"Run 'srpo fetch {dataset_id}' to download it, 'srpo fetch --d4rl-file FILE --env ENV --id {dataset_id}' "
        "to import a D4RL file, or 'srpo collect' to roll out a policy.",
    )


def store_root() -> Path:
    """The local Minari store (MINARI_DATASETS_PATH, else Minari's default)."""
    import minari

    return Path(minari.storage.get_dataset_path())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_store() -> None:
    """Finish or undo what a killed ``staged_dataset`` left in the store: a replaced dataset moved aside but
    not yet deleted goes back where it was if nothing took its place; staging folders of dead processes go.
    Both are hidden folders (``.srpo-*``), which Minari's listing skips."""
    root = store_root()
    for path in list(root.glob(".srpo-staging-*")) + list(root.glob(".srpo-replaced-*")):
        try:
            pid = int(path.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        id_file = path / "dataset_id"
        if path.name.startswith(".srpo-replaced-") and id_file.exists():
            target = root / id_file.read_text().strip()
            if not target.exists() and (path / "dataset").exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path / "dataset", target)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (in the main thread), so that cleanup code runs on a kill too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staged_dataset(dataset_id: str, force: bool):
    """Build ``dataset_id`` in a private staging store beside the real one (Minari writes wherever
    MINARI_DATASETS_PATH points), and put it in place only once complete: a failed or killed build, import or
    download leaves the existing dataset (replaced with ``force``) as it was.

    The swap is two renames on one file system: the old dataset moves aside, the new one takes its place, and
    the old one is deleted. A kill between the two renames leaves the old one aside, and ``recover_store``
    (run by every store access) puts it back."""
    root = store_root()
    recover_store()
    target = root / dataset_id
    if target.exists() and not force:
        raise UsageError(f"Dataset '{dataset_id}' already exists at {target}.", "Pass --force to replace it.")
    staging = root / f".srpo-staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    previous_env = os.environ.get("MINARI_DATASETS_PATH")
    try:
        staging.mkdir(parents=True)
        os.environ["MINARI_DATASETS_PATH"] = str(staging)
        with _terminate_as_interrupt():
            yield
            built = staging / dataset_id
            if not (built / "data").exists():
                raise RuntimeFailure(f"Building '{dataset_id}' produced no dataset; nothing was replaced.")
            aside = root / f".srpo-replaced-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            if target.exists():
                aside.mkdir()
                (aside / "dataset_id").write_text(dataset_id)
                os.replace(target, aside / "dataset")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, target)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if previous_env is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous_env
        shutil.rmtree(staging, ignore_errors=True)


def _remote_unreachable() -> str | None:
    """Why Minari's remote (Hugging Face) cannot be reached, in a few milliseconds, or None. Offline, its
    download retries for about 25 s before failing; this answers at once."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None  # Minari fails at once by itself, with its own message
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{host} is unreachable: {e.strerror or e}"
    return None


def fetch(dataset_id: str | None, force: bool = False) -> tuple[str, str]:
    """Make ``dataset_id`` available locally. Returns (id, what happened)."""
    import minari

    dataset_id = dataset_id or DEFAULT_DATASET
    check_dataset_id(dataset_id)
    recover_store()
    if dataset_id == DEFAULT_DATASET:
        if dataset_id in local_ids() and not force:
            return dataset_id, "already local"
        build_default_dataset(force=force)
        return dataset_id, "built locally"
    if dataset_id in local_ids() and not force:
        return dataset_id, "already local"
    local = local_ids()
    why = _remote_unreachable()
    try:
        if why is not None:
            raise OSError(why)
        with staged_dataset(dataset_id, force):
            minari.download_dataset(dataset_id)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeFailure(
            f"Could not download '{dataset_id}' from Minari's remote ({first})"
            + ("; the local copy is unchanged." if dataset_id in local else "."),
            f"Local datasets: {', '.join(local) or 'none'}. Offline? Import a D4RL file with "
            "'srpo fetch --d4rl-file FILE --env ENV --id ID', roll out a policy with 'srpo collect', or "
            f"build the built-in default with 'srpo fetch {DEFAULT_DATASET}'.",
        ) from None
    return dataset_id, "downloaded"


def pendulum_controller(obs: np.ndarray) -> np.ndarray:
    """Energy-pumping swing-up, PD balance near the top. obs = [cos th, sin th, thdot]; returns torque."""
    c, s, w = obs[..., 0], obs[..., 1], obs[..., 2]
    th = np.arctan2(s, c)
    # Pendulum-v1: thddot = 15 sin(th) + 3 u, so H = w^2/2 + 15 cos(th) is conserved and equals 15 upright.
    energy = 0.5 * w**2 + 15.0 * c
    pump = np.clip(0.5 * (15.0 - energy) * np.sign(w + 1e-6), -2.0, 2.0)
    pump = np.where(np.abs(w) < 1e-3, 1.0, pump)
    balance = np.clip(-(12.0 * th + 3.0 * w), -2.0, 2.0)
    return np.where(c > 0.85, balance, pump).astype(np.float32).reshape(-1)


def _stack_observations(obs: list) -> Any:
    """One episode's observations as Minari stores them: an array [T+1, ...], or for Dict (and Tuple)
    observations the same structure with an array per entry."""
    if isinstance(obs[0], dict):
        return {k: _stack_observations([o[k] for o in obs]) for k in obs[0]}
    if isinstance(obs[0], tuple):
        return tuple(_stack_observations([o[i] for o in obs]) for i in range(len(obs[0])))
    return np.asarray(obs)


def rollout_buffers(
    env_id: str,
    policy: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    steps: int | None,
    episodes: int | None,
    seed: int,
):
    """Roll ``policy`` out into Minari EpisodeBuffers; the last episode is cut as a truncation."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    try:
        env = gym.make(env_id)
    except Exception as e:
        raise RuntimeFailure(
            f"Cannot create environment '{env_id}' ({str(e).splitlines()[0]}).",
            "Check the id (e.g. 'Hopper-v5') and that its package is installed (gymnasium[mujoco] for MuJoCo).",
        ) from None
    rng = np.random.default_rng(seed)
    buffers, returns, total, ep = [], [], 0, 0
    while (steps is None or total < steps) and (episodes is None or ep < episodes):
        ep_seed = seed * 100_003 + ep
        obs, _ = env.reset(seed=ep_seed)
        ep_obs, ep_act, ep_rew, ep_term, ep_trunc = [obs], [], [], [], []
        done = False
        while not done:
            a = np.asarray(policy(obs, rng), dtype=env.action_space.dtype).reshape(env.action_space.shape)
            obs, r, term, trunc, _ = env.step(a)
            ep_obs.append(obs), ep_act.append(a), ep_rew.append(float(r))
            ep_term.append(bool(term)), ep_trunc.append(bool(trunc))
            total += 1
            done = term or trunc
            if steps is not None and total >= steps and not done:
                ep_trunc[-1], done = True, True
        buffers.append(
            EpisodeBuffer(
                id=ep,
                seed=ep_seed,
                observations=_stack_observations(ep_obs),
                actions=np.asarray(ep_act),
                rewards=np.asarray(ep_rew, dtype=np.float64),
                terminations=np.asarray(ep_term),
                truncations=np.asarray(ep_trunc),
            )
        )
        returns.append(float(np.sum(ep_rew)))
        ep += 1
    env.close()
    return buffers, np.asarray(returns)


def _create(dataset_id: str, buffers, env_id: str, ref: tuple[float, float] | None, algorithm: str, desc: str):
    import minari

    kwargs = {}
    if ref is not None:
        kwargs = {"ref_min_score": float(ref[0]), "ref_max_score": float(ref[1])}
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=env_id,
        eval_env=env_id,
        algorithm_name=algorithm,
        author="srpo",
        author_email="srpo@localhost",
        code_permalink="https://pypi.org/project/srpo-cli/",
        description=desc,
        **kwargs,
    )


def build_default_dataset(force: bool = False, episodes: int = DEFAULT_EPISODES, seed: int = 0) -> str:
    """Build the offline built-in default dataset with measured reference scores."""
    dataset_id = DEFAULT_DATASET

    def noisy(obs, rng):
        a = pendulum_controller(obs)
        if rng.random() < DEFAULT_RANDOM_PROB:
            a = rng.uniform(-2.0, 2.0, size=a.shape).astype(np.float32)
        return np.clip(a + DEFAULT_NOISE * rng.standard_normal(a.shape), -2.0, 2.0)

    # Reference scores measured with fixed seeds: uniform random torques (0) and the noiseless controller (100).
    _, random_returns = rollout_buffers(
        DEFAULT_ENV, lambda o, rng: rng.uniform(-2, 2, size=(1,)), None, 50, seed=10_000 + seed
    )
    _, expert_returns = rollout_buffers(
        DEFAULT_ENV, lambda o, rng: pendulum_controller(o), None, 50, seed=20_000 + seed
    )
    with staged_dataset(dataset_id, force):
        buffers, returns = rollout_buffers(DEFAULT_ENV, noisy, None, episodes, seed=seed)
        _create(
            dataset_id,
            buffers,
            DEFAULT_ENV,
            (float(random_returns.mean()), float(expert_returns.mean())),
            "scripted swing-up controller, 50% random torque, Gaussian noise 0.8",
            "srpo's built-in default: Pendulum-v1, a noisy scripted controller ('medium' quality). Reference "
            "scores: mean return of uniform random torques (min) and of the noiseless controller (max).",
        )
    return dataset_id


def _make_env(env_id: str):
    import gymnasium as gym

    try:
        return gym.make(env_id)
    except Exception as e:
        raise RuntimeFailure(
            f"Cannot create environment '{env_id}' ({str(e).splitlines()[0] if str(e) else type(e).__name__}).",
            "Check the id (e.g. 'Hopper-v5') and that its package is installed (gymnasium[mujoco] for MuJoCo).",
        ) from None


def _check_env_dims(env_id: str, obs_dim: int, action_dim: int, what: str) -> None:
    """The data's observation and action sizes must be the environment's: a dataset recorded against the wrong
    --env would train 1-dim actions broadcast to 3, or evaluate on an environment it does not describe."""
    from .evaluate import check_env_matches

    env = _make_env(env_id)
    try:
        check_env_matches(env, obs_dim, action_dim, what)
    except RuntimeFailure as e:
        raise UsageError(
            e.message, "Pass the --env the data was recorded in (e.g. Hopper-v5 for hopper files)."
        ) from None
    finally:
        env.close()


@dataclass
class ImportReport:
    dataset_id: str
    episodes: int
    steps: int
    dropped: int
    has_next_observations: bool
    ref: tuple[float, float] | None


def _family(env_id: str, dataset_id: str) -> str | None:
    text = f"{env_id} {dataset_id}".lower()
    for fam in ("halfcheetah", "walker2d", "hopper", "antmaze"):
        if fam in text:
            return fam
    return None


def import_d4rl(
    file: Path,
    env_id: str,
    dataset_id: str,
    ref_min: float | None = None,
    ref_max: float | None = None,
    force: bool = False,
) -> ImportReport:
    """Import a D4RL-format HDF5 file as a local Minari dataset.

    Episodes end at ``terminals`` or ``timeouts``. Without ``next_observations`` the last step of a
    timed-out episode has no true next state, so it is dropped (as D4RL's ``qlearning_dataset`` does); a
    terminated episode keeps its last step, whose next state is never bootstrapped from.
    """
    import h5py

    check_dataset_id(dataset_id)
    file = Path(file)
    if not file.exists():
        raise UsageError(f"D4RL file {file} does not exist.", "Pass the path of a D4RL .hdf5 file.")
    try:
        with h5py.File(file, "r") as f:
            need = ["observations", "actions", "rewards", "terminals"]
            missing = [k for k in need if k not in f]
            if missing:
                raise UsageError(
                    f"{file} is not a D4RL dataset: missing {', '.join(missing)}.",
                    "A D4RL file holds observations, actions, rewards, terminals and timeouts.",
                )
            obs = np.asarray(f["observations"], dtype=np.float32)
            act = np.asarray(f["actions"], dtype=np.float32)
            rew = np.asarray(f["rewards"], dtype=np.float64).reshape(-1)
            term = np.asarray(f["terminals"], dtype=bool).reshape(-1)
            tout = np.asarray(f["timeouts"], dtype=bool).reshape(-1) if "timeouts" in f else np.zeros_like(term)
            nxt = np.asarray(f["next_observations"], dtype=np.float32) if "next_observations" in f else None
    except OSError as e:
        raise UsageError(f"{file} is not a readable HDF5 file ({e}).") from None
    n = len(rew)
    if not (len(obs) == len(act) == len(term) == len(tout) == n) or (nxt is not None and len(nxt) != n):
        raise UsageError(f"{file}: the arrays have different lengths; the file is damaged.")
    if n == 0:
        raise UsageError(f"{file} holds no transitions (its arrays have zero rows).", "Check the file.")
    if obs.ndim != 2 or act.ndim != 2:
        raise UsageError(
            f"{file}: observations and actions must be tables [rows, dims], got shapes {obs.shape} and {act.shape}."
        )
    _check_env_dims(env_id, obs.shape[1], act.shape[1], f"{file}")
    fam = _family(env_id, dataset_id)
    if ref_min is not None and ref_max is not None:
        ref = (ref_min, ref_max)
    elif fam is not None:
        ref = D4RL_REF[fam]
    else:
        ref = None
    from minari.data_collector import EpisodeBuffer

    ends = np.flatnonzero(term | tout)
    if len(ends) == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)  # data that stops mid-episode: a truncation
    buffers, start, dropped, steps = [], 0, 0, 0
    for end in ends:
        terminated = bool(term[end])
        sl = slice(start, end + 1)
        if nxt is not None:
            o = np.concatenate([obs[sl], nxt[end : end + 1]])
            a, r = act[sl], rew[sl]
        elif terminated:
            # The terminal step's next state is unknown but never used (d = 1): repeat the last state.
            o = np.concatenate([obs[sl], obs[end : end + 1]])
            a, r = act[sl], rew[sl]
        else:
            o, a, r = obs[sl], act[start:end], rew[start:end]
            dropped += 1
        start = end + 1
        if len(a) == 0:
            continue
        te = np.zeros(len(a), dtype=bool)
        tr = np.zeros(len(a), dtype=bool)
        te[-1] = terminated
        tr[-1] = not terminated
        buffers.append(
            EpisodeBuffer(id=len(buffers), observations=o, actions=a, rewards=r, terminations=te, truncations=tr)
        )
        steps += len(a)
    if not buffers:
        raise UsageError(f"{file} holds no complete transitions.")
    with staged_dataset(dataset_id, force):
        try:
            _create(
                dataset_id,
                buffers,
                env_id,
                ref,
                f"imported from D4RL file {file.name}",
                f"Imported with srpo from {file.name} ({'with' if nxt is not None else 'without'} next_observations).",
            )
        except RuntimeFailure:
            raise
        except Exception as e:
            raise RuntimeFailure(
                f"Could not create dataset '{dataset_id}' for environment '{env_id}' ({str(e).splitlines()[0]}).",
                "Check --env (e.g. 'Hopper-v5') and that its package is installed.",
            ) from None
    return ImportReport(dataset_id, len(buffers), steps, dropped, nxt is not None, ref)


def collect(
    env_id: str,
    dataset_id: str,
    policy: str,
    steps: int,
    noise: float = 0.0,
    seed: int = 0,
    force: bool = False,
    ref_min: float | None = None,
    ref_max: float | None = None,
) -> tuple[str, np.ndarray]:
    """Roll a random policy or an srpo actor checkpoint out into a local dataset."""
    import gymnasium as gym

    check_dataset_id(dataset_id)
    if steps <= 0:
        raise UsageError(f"--steps must be positive, got {steps}.")
    recover_store()
    if (store_root() / dataset_id).exists() and not force:
        raise UsageError(
            f"Dataset '{dataset_id}' already exists at {store_root() / dataset_id}.", "Pass --force to replace it."
        )
    if policy == "random":
        space = None

        def act(obs, rng):
            nonlocal space
            if space is None:
                space = gym.make(env_id).action_space
                space.seed(int(rng.integers(1 << 31)))
            return space.sample()

    else:
        from .checkpoint import load_checkpoint
        from .data import trained_observation_space
        from .policies import actor_policy

        ckpt = load_checkpoint(Path(policy))
        actor = actor_policy(ckpt)
        # a policy trained on Dict observations (goal-conditioned tasks) gets them flattened as in training
        trained_space = trained_observation_space(ckpt.meta["extra"])
        env = _make_env(env_id)
        try:
            if trained_space is None and isinstance(env.observation_space, gym.spaces.Dict | gym.spaces.Tuple):
                raise UsageError(
                    f"{env_id} observes {type(env.observation_space).__name__} spaces, but {policy} was trained on "
                    "vector observations.",
                    "Roll out a policy trained on this environment's datasets.",
                )
            from .evaluate import check_env_matches

            check_env_matches(env, ckpt.meta["obs_dim"], ckpt.meta["action_dim"], policy)
        finally:
            env.close()

        def act(obs, rng):
            if isinstance(obs, dict | tuple) and trained_space is None:
                raise UsageError(
                    f"{env_id} observes {type(obs).__name__}s, but {policy} was trained on vector observations.",
                    "Roll out a policy trained on this environment's datasets.",
                )
            flat = obs if trained_space is None else gym.spaces.flatten(trained_space, obs)
            a = actor.act_normalized(np.asarray(flat, dtype=np.float32)[None])[0]
            if noise > 0:
                a = np.clip(a + noise * rng.standard_normal(a.shape), -1.0, 1.0)
            return actor.to_env(a[None])[0]

    with staged_dataset(dataset_id, force):
        buffers, returns = rollout_buffers(env_id, act, steps, None, seed)
        ref = (ref_min, ref_max) if ref_min is not None and ref_max is not None else None
        _create(dataset_id, buffers, env_id, ref, f"srpo collect --policy {policy}", f"Rollouts of {policy}.")
    return dataset_id, returns


def describe_local() -> list[dict]:
    """One row per local dataset for ``srpo datasets``."""
    import gymnasium as gym
    import minari

    rows = []
    for dataset_id in local_ids():
        try:
            ds = minari.load_dataset(dataset_id)
            meta = ds.storage.metadata
            returns = [float(np.sum(ep.rewards)) for ep in ds.iterate_episodes()]
            rows.append(
                {
                    "id": dataset_id,
                    "episodes": ds.total_episodes,
                    "steps": ds.total_steps,
                    "obs_dim": int(gym.spaces.flatdim(ds.observation_space)),
                    "action_dim": int(np.prod(ds.action_space.shape)),
                    "ref_scores": meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None,
                    "mean_return": float(np.mean(returns)) if returns else float("nan"),
                }
            )
        except Exception as e:
            rows.append({"id": dataset_id, "error": str(e).splitlines()[0]})
    return rows
