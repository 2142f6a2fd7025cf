// `lifeline run` under faults of its own and of its surroundings: the supervisor killed with
// SIGKILL, a closed output pipe, a full /dev/shm, signals that arrive together, a stop that
// produced no checkpoint, out-of-range durations, a trainer that cannot start. The real lifeline
// binary, real trainers, real signals and mounts (the suite runs as root).
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/process.h"
#include "support/temp_dir.h"

using namespace lifeline::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string write_policy(const TempDir& d, const std::string& extra = "") {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\n"
                         "checkpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                         "restart:\n  backoff_seconds: 0\n"
                         "retention:\n  keep_last: 1000\n  keep_best: 0\n"
                      << extra;
  return path;
}

std::vector<std::string> lifeline_run(const TempDir& d, const std::vector<std::string>& cmd,
                                      const std::vector<std::string>& opts = {}) {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", write_policy(d), "--ckpt-dir", d / "ckpt"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

std::vector<std::string> train_cmd(const TempDir& d, int steps, int delay_ms) {
  return {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7", "--step-delay-ms",
          std::to_string(delay_ms), "--log-every", "1", "--digest-out", d / "digest"};
}

std::vector<json> history_events(const std::string& dir) {
  std::vector<json> out;
  std::ifstream in(dir + "/history.jsonl");
  std::string line;
  while (std::getline(in, line))
    if (auto j = json::parse(line, nullptr, false); j.is_object()) out.push_back(j);
  return out;
}

std::vector<json> events_named(const std::string& dir, const std::string& name) {
  std::vector<json> out;
  for (auto& e : history_events(dir))
    if (e.value("event", "") == name) out.push_back(e);
  return out;
}

bool process_gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// Waits (bounded) until `pid` no longer exists; true when it went.
bool wait_gone(pid_t pid, std::chrono::seconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!process_gone(pid)) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

pid_t trainer_pid_from(const std::string& line) {
  std::smatch m;
  std::regex re("trainer started, pid ([0-9]+)");
  REQUIRE_MESSAGE(std::regex_search(line, m, re), line);
  return pid_t(std::stol(m[1]));
}

// In a forked child: becomes argv (exit 127 when it cannot).
[[noreturn]] void exec_argv(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  ::_exit(127);
}

// Runs argv in a child whose stdout and stderr go to a pipe closed at the other end before it
// starts, as `lifeline run ... 2>&1 | head` leaves it once head has quit. The exit status.
int run_into_closed_pipe(const std::vector<std::string>& argv) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  ::close(fds[0]);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    exec_argv(argv);
  }
  ::close(fds[1]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Runs argv in a mount namespace of its own whose /dev/shm is a full 4 KiB tmpfs; the output
// (stdout and stderr) goes to `out`. The exit status.
int run_with_full_dev_shm(const std::vector<std::string>& argv, std::string* out) {
  return run_in_mount_namespace(
      argv,
      [] {
        if (::mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=4k") != 0)
          return std::string("mount a 4k tmpfs on /dev/shm: ") + std::strerror(errno);
        int fd = ::open("/dev/shm/filler", O_CREAT | O_WRONLY, 0600);
        char page[4096] = {};
        while (fd >= 0 && ::write(fd, page, sizeof page) > 0) {
        }
        ::close(fd);
        return std::string();
      },
      out);
}

}  // namespace

TEST_CASE("a supervisor killed with SIGKILL takes its trainer with it; the next run removes its control block and resumes") {
  TempDir d;
  pid_t trainer = 0;
  std::string control;
  {
    Process first(lifeline_run(d, train_cmd(d, 100000, 20)));
    trainer = trainer_pid_from(first.wait_for_line("trainer started"));
    REQUIRE(first.wait_for_line("checkpoint committed: step 20") != "");
    json record = json::parse(std::ifstream(d / "ckpt/supervisor.json"));
    control = record["control"].get<std::string>();
    first.signal(SIGKILL);
    // The trainer must not go on training (and writing) without its supervisor. (Its output
    // pipe stays open meanwhile: a SIGPIPE must not be what ends it.)
    bool gone = wait_gone(trainer, std::chrono::seconds(10));
    CHECK_MESSAGE(gone, "trainer pid ", trainer, " outlived its supervisor");
    if (!gone) ::kill(trainer, SIGKILL);
    CHECK(first.wait() == 128 + SIGKILL);
  }
  // The killed supervisor could not unlink its control block.
  CHECK(fs::exists("/dev/shm" + control));

  std::string out;
  int rc = run(lifeline_run(d, train_cmd(d, 60, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("resuming from step") != std::string::npos, out);
  CHECK_FALSE(fs::exists("/dev/shm" + control));
  auto stale = events_named(d / "ckpt", "attempt_lost");
  REQUIRE(stale.size() == 1);
  CHECK(stale[0]["control"] == control);
  CHECK(stale[0]["last_step"].get<uint64_t>() >= 20);
}

TEST_CASE("a run waits while a process of an earlier attempt still holds the writers' lock, then stops it") {
  TempDir d;
  fs::create_directories(d / "ckpt");
  // A writer whose supervisor is gone: it holds the lock shared, as a client does, and nothing
  // else stops it (flock -o: only flock itself holds the lock, its sleeping child does not).
  Process writer({"/usr/bin/flock", "--shared", "--close", d / "ckpt/.writers.lock", "/bin/sh", "-c",
                  "echo locked $$; exec sleep 600"});
  std::string locked = writer.wait_for_line("locked");
  REQUIRE(locked != "");
  pid_t sleeper = pid_t(std::stol(locked.substr(locked.find("locked ") + 7)));
  std::string out;
  int rc = run(lifeline_run(d, {"/bin/true"}), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("waiting for pid " + std::to_string(writer.pid()) + " (flock") != std::string::npos, out);
  CHECK_MESSAGE(out.find("stopping pid " + std::to_string(writer.pid())) != std::string::npos, out);
  ::kill(sleeper, SIGKILL);
  CHECK(writer.wait() == 128 + SIGKILL);
  // The trainer started only once the writer was gone.
  CHECK(out.find("stopping pid") < out.find("trainer started"));
}

TEST_CASE("staging folders that dead writers left are removed when an attempt starts") {
  TempDir d;
  fs::create_directories(d / "ckpt/.staging-step-000000000010-999999-deadbeef");
  std::ofstream(d / "ckpt/.staging-step-000000000010-999999-deadbeef/model.pt") << "half a checkpoint";
  Process p(lifeline_run(d, {"/bin/sh", "-c", "echo started; sleep 600"}));
  REQUIRE(p.wait_for_line("started") != "");
  CHECK_FALSE(fs::exists(d / "ckpt/.staging-step-000000000010-999999-deadbeef"));
  p.signal(SIGUSR1);
  p.wait();
}

TEST_CASE("a closed output pipe does not kill the supervisor") {
  TempDir d;
  // The trainer writes nothing; lifeline logs to the closed pipe at start and at the end.
  int rc = run_into_closed_pipe(lifeline_run(d, {"/bin/sleep", "0.5"}));
  CHECK(rc == 0);
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["end_reason"] == "completed");
}

TEST_CASE("a full /dev/shm makes lifeline run exit 2 with a message naming /dev/shm, not die of SIGBUS") {
  TempDir d;
  std::string out;
  int rc = run_with_full_dev_shm(lifeline_run(d, {"/bin/true"}), &out);
  CHECK_MESSAGE(rc == 2, out);
  CHECK_MESSAGE(out.find("/dev/shm") != std::string::npos, out);
  CHECK_MESSAGE(out.find("No space left") != std::string::npos, out);
}

TEST_CASE("SIGTERM and SIGINT that arrive together are reported as SIGTERM, with SIGINT beside it") {
  TempDir d;
  Process p(lifeline_run(d, train_cmd(d, 2000, 20)));
  REQUIRE(p.wait_for_line("step 5 ") != "");
  // Stopped, the supervisor cannot take a signal: both wait, pending together, as they do when
  // a loaded node schedules it late. The kernel then delivers the lower number (INT) first.
  REQUIRE(::kill(p.pid(), SIGSTOP) == 0);
  ::kill(p.pid(), SIGTERM);
  ::kill(p.pid(), SIGINT);
  REQUIRE(::kill(p.pid(), SIGCONT) == 0);
  int rc = p.wait();
  CHECK_MESSAGE(rc == 75, p.output());
  auto signals = events_named(d / "ckpt", "signal");
  REQUIRE(!signals.empty());
  CHECK(signals[0]["signal"] == "TERM");
  REQUIRE(signals[0].contains("together"));
  CHECK(signals[0]["together"] == json({"INT", "TERM"}));
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["signal"] == "TERM");
}

TEST_CASE("a stop that produced no checkpoint exits 75 and says so: why, the resume step, the steps lost") {
  TempDir d;
  Process p(lifeline_run(d, train_cmd(d, 100000, 20), {"--grace", "1"}));
  pid_t trainer = trainer_pid_from(p.wait_for_line("trainer started"));
  REQUIRE(p.wait_for_line("checkpoint committed: step 40") != "");
  // The trainer stops answering (SIGSTOP: its client can neither save nor exit) until the
  // supervisor's deadline passes and SIGKILL ends it.
  REQUIRE(::kill(trainer, SIGSTOP) == 0);
  p.signal(SIGUSR1);
  int rc = p.wait();
  CHECK(rc == 75);
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  REQUIRE(ends[0].contains("stop_checkpoint"));
  const json& stop = ends[0]["stop_checkpoint"];
  CHECK(stop["state"] == "missing");
  CHECK(stop["why"].get<std::string>().find("deadline") != std::string::npos);
  // The next attempt resumes from the newest commit; everything after it is lost.
  uint64_t resume = stop["resume_step"].get<uint64_t>();
  CHECK(resume == ends[0]["last_checkpoint_step"].get<uint64_t>());
  CHECK(resume >= 40);
  CHECK(stop["lost_steps"].get<uint64_t>() == ends[0]["last_step"].get<uint64_t>() - resume);
  CHECK_MESSAGE(p.output().find("no stop checkpoint") != std::string::npos, p.output());
  CHECK(p.output().find("the next attempt resumes from step " + std::to_string(resume)) != std::string::npos);
  // history and status say the same.
  std::string out;
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "ckpt", "--json"}, &out) == 0);
  json attempts = json::parse(out);
  REQUIRE(attempts.size() == 1);
  CHECK(attempts[0]["stop_checkpoint"]["state"] == "missing");
  CHECK(attempts[0]["stop_checkpoint"]["resume_step"] == resume);
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "ckpt"}, &out) == 0);
  CHECK_MESSAGE(out.find("the stop produced no checkpoint") != std::string::npos, out);
  CHECK(run({binary("LIFELINE_BIN"), "status", d / "ckpt"}, &out) == 1);
  CHECK_MESSAGE(out.find("the next attempt resumes from step " + std::to_string(resume)) != std::string::npos, out);
}

TEST_CASE("a stop with its checkpoint committed records it as committed") {
  TempDir d;
  Process p(lifeline_run(d, train_cmd(d, 100000, 20)));
  REQUIRE(p.wait_for_line("step 25 ") != "");
  p.signal(SIGUSR1);
  CHECK(p.wait() == 75);
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["stop_checkpoint"]["state"] == "committed");
  CHECK(ends[0]["stop_checkpoint"]["step"] == ends[0]["last_checkpoint_step"]);
}

TEST_CASE("out-of-range durations are refused with exit 2 before anything starts: --grace and the policy") {
  TempDir d;
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "run", "--grace", "1e300", "--ckpt-dir", d / "ckpt", "--", "/bin/true"}, &out) == 2);
  CHECK_MESSAGE(out.find("--grace") != std::string::npos, out);
  CHECK_FALSE(fs::exists(d / "ckpt"));
  // Units as in a policy file are fine.
  CHECK(run({binary("LIFELINE_BIN"), "run", "--grace", "1m30s", "--requeue", "none", "--ckpt-dir", d / "ok", "--",
             "/bin/true"},
            &out) == 0);
  std::ofstream(d / "long.yaml") << "version: 1\nstop:\n  grace_seconds: 99999999999999\n";
  CHECK(run({binary("LIFELINE_BIN"), "policy", "check", d / "long.yaml"}, &out) == 2);
  CHECK_MESSAGE(out.find("long.yaml:3") != std::string::npos, out);
  CHECK(out.find("too large") != std::string::npos);
  CHECK(run({binary("LIFELINE_BIN"), "run", "--policy", d / "long.yaml", "--ckpt-dir", d / "ckpt", "--", "/bin/true"},
            &out) == 2);
  CHECK_FALSE(fs::exists(d / "ckpt"));
}

TEST_CASE("a trainer that cannot start leaves nothing behind: no directory, no history, exit 2") {
  TempDir d;
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt", "--", "/nonexistent/trainer"}, &out) == 2);
  CHECK(out.find("/nonexistent/trainer") != std::string::npos);
  CHECK_FALSE(fs::exists(d / "ckpt"));
  CHECK(run({binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt", "--", "no-such-trainer-in-path"}, &out) == 2);
  CHECK(out.find("not found in PATH") != std::string::npos);
  CHECK_FALSE(fs::exists(d / "ckpt"));
  // A directory is not a trainer either.
  CHECK(run({binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt", "--", d.path()}, &out) == 2);
  CHECK_FALSE(fs::exists(d / "ckpt"));
}

namespace {

// Waits for `p` to exit, but SIGKILLs it after `limit` (then `*killed` is set): a supervisor
// that never ends must fail the test, not hang it.
int wait_or_kill(Process& p, std::chrono::seconds limit, bool* killed) {
  std::atomic<bool> done{false};
  *killed = false;
  std::thread watchdog([&] {
    auto until = std::chrono::steady_clock::now() + limit;
    while (!done && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!done) {
      *killed = true;
      p.signal(SIGKILL);
    }
  });
  int rc = p.wait();
  done = true;
  watchdog.join();
  return rc;
}

std::vector<std::string> run_with_policy(const TempDir& d, const std::string& policy, const std::vector<std::string>& cmd,
                                         const std::vector<std::string>& opts = {}) {
  std::string path = d / "custom-policy.yaml";
  std::ofstream(path) << policy;
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", path, "--ckpt-dir", d / "ckpt"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

}  // namespace

TEST_CASE("a trainer that hangs while a periodic checkpoint request is pending is detected as hung") {
  TempDir d;
  // Periodic requests every second; no step for 2 s is a hang; no restart budget: it ends the run.
  Process p(run_with_policy(d,
                            "version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 1\n"
                            "restart:\n  backoff_seconds: 0\n  max_requeues: 0\nstop:\n  hang_seconds: 2\n",
                            train_cmd(d, 100000, 20)));
  pid_t trainer = trainer_pid_from(p.wait_for_line("trainer started"));
  REQUIRE(p.wait_for_line("checkpoint committed") != "");
  // Stopped, the trainer neither steps nor answers the next periodic request (due within 1 s,
  // before the 2 s of silence are up): the supervisor waits with a request pending.
  REQUIRE(::kill(trainer, SIGSTOP) == 0);
  bool killed = false;
  int rc = wait_or_kill(p, std::chrono::seconds(60), &killed);
  CHECK_MESSAGE(!killed, "the supervisor never noticed the hang:\n", p.output());
  CHECK(rc == 128 + SIGKILL);  // the trainer's status: SIGTERM waits while it is stopped, SIGKILL does not
  auto hangs = events_named(d / "ckpt", "hang");
  REQUIRE(hangs.size() == 1);
  auto requests = events_named(d / "ckpt", "checkpoint_request");
  REQUIRE(!requests.empty());
  // The request that went unanswered came before the hang was declared.
  CHECK(requests.back()["time_ns"].get<uint64_t>() < hangs[0]["time_ns"].get<uint64_t>());
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["end_reason"] == "failed");
}

TEST_CASE("the stop deadline counts from the signal even while Slurm takes 20 s to answer") {
  TempDir d;
  // A stand-in for scontrol (the real one is exercised by the slurm suite): `show job` answers
  // at once, except the first call after the test creates `slow`, which takes 30 s (the
  // supervisor's 20 s timeout ends it, and the retry answers).
  fs::create_directories(d / "bin");
  std::string fake = d / "bin/scontrol";
  std::ofstream(fake) << "#!/bin/sh\n"
                         "case \"$1 $2\" in\n"
                         "  'show config') echo 'KillWait                = 30 sec' ;;\n"
                         "  'show job')\n"
                         "    if [ -e '" << d / "slow" << "' ]; then rm -f '" << d / "slow" << "'; exec sleep 30; fi\n"
                         "    echo 'JobId=999 JobName=train JobState=RUNNING Reason=None StartTime=2026-01-01T00:00:00 "
                         "EndTime=Unknown TimeLimit=UNLIMITED' ;;\n"
                         "esac\n";
  fs::permissions(fake, fs::perms::owner_all);
  std::map<std::string, std::string> env{{"PATH", d / "bin" + std::string(":") + std::getenv("PATH")},
                                         {"SLURM_JOB_ID", "999"}};
  Process p(lifeline_run(d, train_cmd(d, 100000, 20), {"--grace", "2", "--requeue", "local"}), env);
  pid_t trainer = trainer_pid_from(p.wait_for_line("trainer started"));
  REQUIRE(p.wait_for_line("checkpoint committed") != "");
  std::ofstream(d / "slow") << "";
  // The trainer cannot commit the stop checkpoint: only the deadline ends the stop.
  REQUIRE(::kill(trainer, SIGSTOP) == 0);
  p.signal(SIGUSR1);
  bool killed = false;
  int rc = wait_or_kill(p, std::chrono::seconds(120), &killed);
  CHECK_FALSE(killed);
  CHECK_MESSAGE(rc == 75, p.output());
  auto signals = events_named(d / "ckpt", "signal");
  auto timeouts = events_named(d / "ckpt", "checkpoint_timeout");
  REQUIRE(signals.size() == 1);
  REQUIRE(timeouts.size() == 1);
  // 2 s of grace, counted from the signal: far less than the 20 s the slow query held.
  double waited = double(timeouts[0]["time_ns"].get<uint64_t>() - signals[0]["time_ns"].get<uint64_t>()) / 1e9;
  CHECK_MESSAGE(waited < 10, "the deadline passed ", waited, " s after the signal");
  auto ends = events_named(d / "ckpt", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["stop_checkpoint"]["state"] == "missing");
}
