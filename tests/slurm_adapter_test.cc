// The Slurm adapter without a cluster: parsing scontrol's answers, retries and timeouts with
// an injected command runner (faults a real scontrol cannot be made to produce on demand).
#include <doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>

#include "slurm/slurm_client.h"
#include "slurm/slurm_job.h"

using namespace lifeline;

namespace {
// Answers each command from a script of results and records what was asked.
struct ScriptedRunner : CommandRunner {
  std::deque<CommandResult> answers;
  std::vector<std::vector<std::string>> asked;
  CommandResult run(const std::vector<std::string>& argv, std::chrono::milliseconds) override {
    asked.push_back(argv);
    CommandResult r = answers.front();
    if (answers.size() > 1) answers.pop_front();
    return r;
  }
};
CommandResult ok(const std::string& out) { return {0, false, out, ""}; }
}  // namespace

TEST_CASE("scontrol show job -o is parsed into fields, values with spaces included") {
  auto f = parse_job_fields(
      "JobId=12 JobName=train UserId=root(0) JobState=RUNNING Reason=None Restarts=2 TimeLimit=00:01:00 "
      "StartTime=2026-11-21T10:00:00 EndTime=2026-11-21T10:01:00 Command=/home/u/run.sbatch --lr 3 WorkDir=/home/u");
  CHECK(f["JobId"] == "12");
  CHECK(f["JobState"] == "RUNNING");
  CHECK(f["Restarts"] == "2");
  CHECK(f["Command"] == "/home/u/run.sbatch --lr 3");
  CHECK(f["WorkDir"] == "/home/u");
  auto start = parse_slurm_time(f["StartTime"]);
  auto end = parse_slurm_time(f["EndTime"]);
  REQUIRE(start);
  REQUIRE(end);
  CHECK(*end - *start == 60ull * 1000000000ull);
  CHECK_FALSE(parse_slurm_time("Unknown"));
}

TEST_CASE("a timed-out scontrol is retried and a later success is used") {
  ScriptedRunner r;
  r.answers = {CommandResult{-1, true, "", ""}, ok("JobId=5 JobState=RUNNING EndTime=2026-11-21T10:01:00 TimeLimit=00:10:00\n")};
  SlurmClient c(r, 3, std::chrono::milliseconds(10));
  auto end = c.end_time_ns("5");
  CHECK(end);
  CHECK(r.asked.size() == 2);
  CHECK(r.asked[0] == std::vector<std::string>{"scontrol", "show", "job", "-o", "5"});
}

TEST_CASE("retries are bounded and a failed requeue reports the command and Slurm's answer") {
  ScriptedRunner r;
  r.answers = {CommandResult{1, false, "", "slurm_requeue error: Job is pending execution\n"}};
  SlurmClient c(r, 3, std::chrono::milliseconds(10));
  SlurmOutcome o = c.requeue("7_3");
  CHECK_FALSE(o.ok);
  CHECK(r.asked.size() == 3);
  CHECK(r.asked[0] == std::vector<std::string>{"scontrol", "requeue", "7_3"});
  CHECK(o.detail == "scontrol requeue 7_3: exit 1: slurm_requeue error: Job is pending execution");
}

TEST_CASE("a command that cannot start is not retried") {
  ScriptedRunner r;
  r.answers = {CommandResult{-1, false, "", "scontrol not found in PATH"}};
  SlurmClient c(r, 3, std::chrono::milliseconds(10));
  CHECK_FALSE(c.requeue("9").ok);
  CHECK(r.asked.size() == 1);
}

TEST_CASE("an unlimited job has no end time") {
  ScriptedRunner r;
  r.answers = {ok("JobId=5 JobState=RUNNING TimeLimit=UNLIMITED EndTime=2027-11-21T10:00:00\n")};
  SlurmClient c(r);
  CHECK_FALSE(c.end_time_ns("5"));
}

TEST_CASE("sbatch resubmission passes the script and its arguments as argv and returns the new id") {
  ScriptedRunner r;
  r.answers = {ok("44;cluster\n")};
  SlurmClient c(r);
  SlurmOutcome o = c.resubmit("/home/u/run.sbatch", {"--lr", "3 e-4"}, "/home/u");
  CHECK(o.ok);
  CHECK(o.detail == "44");
  CHECK(r.asked[0] == std::vector<std::string>{"sbatch", "--parsable", "--chdir=/home/u", "/home/u/run.sbatch", "--lr", "3 e-4"});
}

TEST_CASE("an array task is addressed as ARRAY_TASK, never by the bare id") {
  setenv("SLURM_JOB_ID", "120", 1);
  setenv("SLURM_ARRAY_JOB_ID", "120", 1);
  setenv("SLURM_ARRAY_TASK_ID", "0", 1);
  setenv("SLURM_RESTART_COUNT", "2", 1);
  auto j = SlurmJob::from_env();
  REQUIRE(j);
  CHECK(j->display_id() == "120_0");
  CHECK(j->restart_count == 2);
  for (const char* v : {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"}) unsetenv(v);
  CHECK_FALSE(SlurmJob::from_env());
}

TEST_CASE("a real command runner enforces its timeout and captures output") {
  ProcessCommandRunner r;
  CommandResult quick = r.run({"echo", "hello"}, std::chrono::seconds(5));
  CHECK(quick.ok());
  CHECK(quick.out == "hello\n");
  CommandResult slow = r.run({"sleep", "30"}, std::chrono::milliseconds(200));
  CHECK(slow.timed_out);
  CHECK_FALSE(slow.ok());
  CommandResult missing = r.run({"no-such-program-lifeline"}, std::chrono::seconds(1));
  CHECK(missing.status == -1);
  CHECK(missing.err.find("not found") != std::string::npos);
}

TEST_CASE("scontrol runs with SLURM_TIME_FORMAT=standard whatever the user set; other commands keep the user's") {
  char tmpl[] = "/tmp/lifeline-scontrol-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string dir = tmpl;
  for (const char* name : {"scontrol", "sbatch"}) {
    std::string path = dir + "/" + name;
    FILE* f = fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    fputs("#!/bin/sh\necho \"$SLURM_TIME_FORMAT\"\n", f);
    fclose(f);
    REQUIRE(chmod(path.c_str(), 0700) == 0);
  }
  setenv("SLURM_TIME_FORMAT", "relative", 1);
  ProcessCommandRunner r;
  CHECK(r.run({dir + "/scontrol", "show", "job"}, std::chrono::seconds(5)).out == "standard\n");
  CHECK(r.run({dir + "/sbatch"}, std::chrono::seconds(5)).out == "relative\n");
  unsetenv("SLURM_TIME_FORMAT");
  for (const char* name : {"scontrol", "sbatch"}) unlink((dir + "/" + name).c_str());
  rmdir(dir.c_str());
}
