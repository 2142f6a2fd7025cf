# Spack recipe for lifeline. Use it from a repository of your own:
#   spack repo create ~/spack-lifeline && mkdir -p ~/spack-lifeline/packages/lifeline
#   cp packaging/spack/package.py ~/spack-lifeline/packages/lifeline/ && spack repo add ~/spack-lifeline
#   spack install lifeline@main +python ~torch
# For a release: point `url` at its tarball (`meson dist`, README.md "Install"), uncomment its
# version() with the tarball's sha256, and `spack install lifeline@0.1.0`.

import glob

from spack.package import *


class Lifeline(MesonPackage):
    """lifeline supervises training jobs on Slurm: `lifeline run -- TRAIN...` launches the trainer,
    traps the scheduler's signals, asks the trainer for a checkpoint through shared memory, waits
    until it is durably committed, and requeues the job so the next run resumes."""

    # Placeholders: the project's public repository and release tarballs.
    homepage = "https://github.com/lifeline/lifeline"
    url = "https://github.com/lifeline/lifeline/releases/download/v0.1.0/lifeline-0.1.0.tar.xz"
    git = "https://github.com/lifeline/lifeline.git"

    # license("...")  # the project declares no license yet

    version("main", branch="main")
    # version("0.1.0", sha256="<sha256 of lifeline-0.1.0.tar.xz from meson dist>")

    variant("torch", default=False, description="LibTorch helper liblifeline_torch and the C++ example trainer")
    variant("python", default=True, description="the Python client (import lifeline, lifeline_client)")

    depends_on("cxx", type="build")
    depends_on("meson@1.0:", type="build")
    depends_on("ninja", type="build")
    depends_on("pkgconfig", type="build")

    # Compiled into the lifeline command (static), headers or libraries at build time.
    depends_on("boost@1.74:+filesystem")                # Boost.Process/Asio headers, boost_filesystem
    depends_on("yaml-cpp@0.7:")
    depends_on("spdlog@1.10:")
    depends_on("fmt@9:")
    depends_on("cli11@2.1:", type="build")             # header-only
    depends_on("nlohmann-json@3.10:", type="build")    # header-only, used only inside .cc files
    depends_on("date", type="build")                   # Howard Hinnant's date, header-only
    depends_on("doctest", type="build")                # the test suite (meson.build looks in <include>/doctest)
    # liblifeline_client (and the static one's users: lifeline.pc Requires.private) needs these.
    depends_on("xxhash@0.8:", type=("build", "link", "run"))
    depends_on("openssl", type=("build", "link", "run"))
    # `lifeline run` calls scontrol/sbatch/squeue at run time; a site's own Slurm is usually an
    # external (packages.yaml: slurm: externals: [{spec: slurm@23.02, prefix: /usr}], buildable: false).
    depends_on("slurm", type="run")

    depends_on("py-torch", when="+torch")
    extends("python", when="+python")                  # site-packages on PYTHONPATH when loaded
    depends_on("python@3.8:", type=("build", "run"), when="+python")
    depends_on("py-pip", type="build", when="+python")
    depends_on("py-setuptools@61:", type="build", when="+python")
    depends_on("py-torch", type="run", when="+python+torch")

    def meson_args(self):
        args = ["-Dtorch=" + ("enabled" if self.spec.satisfies("+torch") else "disabled")]
        # One level deep (the project's default too): the .pc files relocate with --define-prefix.
        args.append("-Dlibdir=lib")
        if self.spec.satisfies("+torch"):
            # meson.build finds LibTorch as plain libraries and its C++ API headers at Debian's
            # /usr/include/torch/csrc/api/include; py-torch keeps both inside its site-packages.
            roots = glob.glob(join_path(self.spec["py-torch"].prefix, "lib", "python3*", "site-packages", "torch"))
            if not roots:
                raise InstallError("lifeline +torch: no site-packages/torch under " + self.spec["py-torch"].prefix)
            torch = roots[0]
            args.append("-Dcpp_args=['-isystem{0}/include', '-isystem{0}/include/torch/csrc/api/include']".format(torch))
            args.append("-Dcpp_link_args=['-L{0}/lib', '-Wl,-rpath,{0}/lib']".format(torch))
        return args

    @run_after("install")
    def install_python(self):
        """The Python package into the prefix's site-packages (offline, no build isolation)."""
        if self.spec.satisfies("+python"):
            with working_dir(self.stage.source_path):
                python = self.spec["python"].command
                python("-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps",
                       "--prefix=" + self.prefix, "./python")

    def setup_run_environment(self, env):
        env.set("LIFELINE_ROOT", self.prefix)
        if self.spec.satisfies("~python"):
            # Not pip-installed: the stdlib-only client in share/lifeline/python (as the Lmod
            # modulefile uses it) serves any python3.
            env.prepend_path("PYTHONPATH", join_path(self.prefix, "share", "lifeline", "python"))

    @property
    def libs(self):
        return find_libraries("liblifeline_client", root=self.prefix, recursive=True)
