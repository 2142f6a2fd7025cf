// What the supervisor reads out of Slurm 22.05's answers, without a cluster: stop causes from
// `scontrol show job -o` lines, KillWait from `scontrol show config`, the resubmission's script
// and arguments, and the stop checkpoint's time budget. Field shapes as docs/slurm-facts.md and
// tests/slurm/README.md describe them.
#include <doctest.h>

#include "slurm/job_view.h"

using namespace lifeline;

namespace {

constexpr uint64_t kSecond = 1000000000ull;

// One `scontrol show job -o` line of a running batch job as 22.05 prints it, with the fields
// the tests vary put in; parsed the way the supervisor parses scontrol's answer.
JobFields job_line(const std::string& state, const std::string& time_limit, const std::string& start,
                   const std::string& end, const std::string& command = "/home/u/run.sbatch",
                   const std::string& workdir = "/home/u") {
  return parse_job_fields(
      "JobId=8 JobName=run.sbatch UserId=u(1000) GroupId=u(1000) MCS_label=N/A Priority=1 Nice=0 "
      "Account=(null) QOS=(null) JobState=" + state + " Reason=None Dependency=(null) Requeue=1 Restarts=0 "
      "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:05:00 TimeLimit=" + time_limit + " TimeMin=N/A "
      "SubmitTime=2026-12-05T09:59:58 EligibleTime=2026-12-05T09:59:58 AccrueTime=2026-12-05T09:59:58 "
      "StartTime=" + start + " EndTime=" + end + " Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
      "LastSchedEval=2026-12-05T10:00:00 Scheduler=Main Partition=low AllocNode:Sid=node1:412 "
      "ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=2 NumTasks=1 "
      "CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=2,node=1,billing=2 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* "
      "CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 "
      "OverSubscribe=NO Contiguous=0 Licenses=(null) Network=(null) Command=" + command +
      " WorkDir=" + workdir + " StdErr=/home/u/slurm-8.out StdIn=/dev/null StdOut=/home/u/slurm-8.out Power=");
}

uint64_t at(const std::string& slurm_time) {
  auto t = parse_slurm_time(slurm_time);
  REQUIRE(t);
  return *t;
}

JobFields in_state(const std::string& state) {
  return job_line(state, "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00");
}

}  // namespace

// ---- stop_cause_name ------------------------------------------------------------------

TEST_CASE("stop causes are named as the history records them") {
  CHECK(std::string(stop_cause_name(StopCause::stopped)) == "stopped");
  CHECK(std::string(stop_cause_name(StopCause::preempted)) == "preempted");
  CHECK(std::string(stop_cause_name(StopCause::time_limit)) == "time_limit");
}

// ---- parse_time_limit -----------------------------------------------------------------

TEST_CASE("TimeLimit HH:MM:SS, D-HH:MM:SS, MM:SS and MM are read as Slurm means them") {
  CHECK(parse_time_limit("00:10:00") == 600 * kSecond);
  CHECK(parse_time_limit("01:02:03") == 3723 * kSecond);
  CHECK(parse_time_limit("1-00:00:00") == 86400 * kSecond);
  CHECK(parse_time_limit("2-12:30:15") == (2 * 86400 + 12 * 3600 + 30 * 60 + 15) * kSecond);
  CHECK(parse_time_limit("5:30") == 330 * kSecond);
  CHECK(parse_time_limit("30") == 1800 * kSecond);
}

TEST_CASE("TimeLimit D-HH and D-HH:MM count hours after the day, as sbatch --time does") {
  CHECK(parse_time_limit("1-12") == 36 * 3600 * kSecond);
  CHECK(parse_time_limit("1-12:30") == (36 * 3600 + 30 * 60) * kSecond);
}

TEST_CASE("an UNLIMITED, partition-bound or garbled TimeLimit has no length") {
  CHECK_FALSE(parse_time_limit("UNLIMITED"));
  CHECK_FALSE(parse_time_limit("Partition_Limit"));
  CHECK_FALSE(parse_time_limit(""));
  CHECK_FALSE(parse_time_limit("abc"));
  CHECK_FALSE(parse_time_limit("10:xx"));
  CHECK_FALSE(parse_time_limit("1:2:3:4"));
  CHECK_FALSE(parse_time_limit("-00:10:00"));
  CHECK_FALSE(parse_time_limit("00::00"));
  CHECK_FALSE(parse_time_limit("99999999999999999999"));
}

// ---- parse_kill_wait ------------------------------------------------------------------

TEST_CASE("KillWait=30 sec from show config") {
  std::string config =
      "Configuration data as of 2026-12-05T10:00:00\n"
      "JobRequeue              = 1\n"
      "KillOnBadExit           = 0\n"
      "KillWait                = 30 sec\n"
      "LaunchParameters        = (null)\n";
  CHECK(parse_kill_wait(config) == 30.0);
}

TEST_CASE("KillWait is found in indented show config output too") {
  CHECK(parse_kill_wait("    KillOnBadExit           = 0\n    KillWait                = 10 sec\n") == 10.0);
}

TEST_CASE("show config without a readable KillWait gives none") {
  CHECK_FALSE(parse_kill_wait(""));
  CHECK_FALSE(parse_kill_wait("KillOnBadExit           = 0\nJobRequeue              = 1\n"));
  CHECK_FALSE(parse_kill_wait("KillWait                = (null)\n"));
  CHECK_FALSE(parse_kill_wait("KillWaitFactor          = 30 sec\n"));
  CHECK_FALSE(parse_kill_wait("slurm_load_ctl_conf error: Unable to contact slurm controller\n"));
}

// ---- view_while_running ---------------------------------------------------------------

TEST_CASE("a job shown PENDING while our step runs was preempted") {
  RunningView v = view_while_running(in_state("PENDING"), at("2026-12-05T10:05:00"));
  CHECK(v.cause == StopCause::preempted);
  CHECK_FALSE(v.end_ns);  // a pending job's EndTime is not our run's end
}

TEST_CASE("a job shown PREEMPTED, REQUEUED or REQUEUE_HOLD while our step runs was preempted") {
  for (const char* state : {"PREEMPTED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}) {
    CAPTURE(state);
    CHECK(view_while_running(in_state(state), at("2026-12-05T10:05:00")).cause == StopCause::preempted);
  }
}

TEST_CASE("EndTime earlier than StartTime + TimeLimit by more than 5 s is a preemption's grace cut") {
  // One hour's limit, preempted five minutes in with GraceTime=20: EndTime moves to now + 20 s.
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T10:05:20");
  RunningView v = view_while_running(job, at("2026-12-05T10:05:00"));
  CHECK(v.cause == StopCause::preempted);
  CHECK(v.end_ns == at("2026-12-05T10:05:20"));
}

TEST_CASE("EndTime short of StartTime + TimeLimit by 5 s or less is not a grace cut") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T10:59:55");
  CHECK(view_while_running(job, at("2026-12-05T10:05:00")).cause == StopCause::stopped);
  auto cut = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T10:59:54");
  CHECK(view_while_running(cut, at("2026-12-05T10:05:00")).cause == StopCause::preempted);
}

TEST_CASE("EndTime within 300 s of now is the time limit") {
  auto job = job_line("RUNNING", "00:10:00", "2026-12-05T10:00:00", "2026-12-05T10:10:00");
  RunningView v = view_while_running(job, at("2026-12-05T10:05:01"));
  CHECK(v.cause == StopCause::time_limit);
  CHECK(v.end_ns == at("2026-12-05T10:10:00"));
  CHECK(view_while_running(job, at("2026-12-05T10:05:00")).cause == StopCause::stopped);  // exactly 300 s
}

TEST_CASE("an EndTime already past at the stop is the time limit") {
  auto job = job_line("RUNNING", "00:10:00", "2026-12-05T10:00:00", "2026-12-05T10:10:00");
  CHECK(view_while_running(job, at("2026-12-05T10:10:30")).cause == StopCause::time_limit);
}

TEST_CASE("a running job far from its EndTime was stopped (scancel, an operator)") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00");
  RunningView v = view_while_running(job, at("2026-12-05T10:05:00"));
  CHECK(v.cause == StopCause::stopped);
  CHECK(v.end_ns == at("2026-12-05T11:00:00"));
}

TEST_CASE("a job without a time limit was stopped, its EndTime a year away kept as shown") {
  auto job = job_line("RUNNING", "UNLIMITED", "2026-12-05T10:00:00", "2027-12-05T10:00:00");
  RunningView v = view_while_running(job, at("2026-12-05T10:05:00"));
  CHECK(v.cause == StopCause::stopped);
  CHECK(v.end_ns == at("2027-12-05T10:00:00"));
}

TEST_CASE("a job whose EndTime is Unknown was stopped and has no end") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "Unknown");
  RunningView v = view_while_running(job, at("2026-12-05T10:05:00"));
  CHECK(v.cause == StopCause::stopped);
  CHECK_FALSE(v.end_ns);
  CHECK(view_while_running(JobFields{}, at("2026-12-05T10:05:00")).cause == StopCause::stopped);
}

// ---- cause_after_exit -----------------------------------------------------------------

TEST_CASE("after the trainer exited, a job COMPLETING or PENDING was preempted") {
  for (const char* state : {"COMPLETING", "PENDING", "REQUEUED", "REQUEUE_HOLD", "PREEMPTED"}) {
    CAPTURE(state);
    CHECK(cause_after_exit(in_state(state)) == StopCause::preempted);
  }
}

TEST_CASE("after the trainer exited, TIMEOUT is the time limit and CANCELLED a stop") {
  CHECK(cause_after_exit(in_state("TIMEOUT")) == StopCause::time_limit);
  CHECK(cause_after_exit(in_state("CANCELLED")) == StopCause::stopped);
}

TEST_CASE("after the trainer exited, RUNNING or an unknown state tells nothing new") {
  CHECK_FALSE(cause_after_exit(in_state("RUNNING")));
  CHECK_FALSE(cause_after_exit(in_state("COMPLETED")));
  CHECK_FALSE(cause_after_exit(in_state("FAILED")));
  CHECK_FALSE(cause_after_exit(JobFields{}));
}

// ---- requeued_by_slurm ----------------------------------------------------------------

TEST_CASE("a failed scontrol requeue of a preempted job is Slurm requeueing it itself") {
  CHECK(requeued_by_slurm(nullptr, StopCause::preempted));
  auto running = in_state("RUNNING");
  CHECK(requeued_by_slurm(&running, StopCause::preempted));
}

TEST_CASE("a failed scontrol requeue of a job Slurm shows PENDING or REQUEUED is Slurm's requeue") {
  for (const char* state : {"PENDING", "REQUEUED", "REQUEUE_HOLD", "PREEMPTED"}) {
    CAPTURE(state);
    auto job = in_state(state);
    CHECK(requeued_by_slurm(&job, StopCause::stopped));
    CHECK(requeued_by_slurm(&job, StopCause::time_limit));
  }
}

TEST_CASE("a failed scontrol requeue of a running, timed-out or unknown job is a failure") {
  CHECK_FALSE(requeued_by_slurm(nullptr, StopCause::stopped));
  CHECK_FALSE(requeued_by_slurm(nullptr, StopCause::time_limit));
  for (const char* state : {"RUNNING", "TIMEOUT", "CANCELLED", "COMPLETING"}) {
    CAPTURE(state);
    auto job = in_state(state);
    CHECK_FALSE(requeued_by_slurm(&job, StopCause::stopped));
  }
}

// ---- split_script_args ----------------------------------------------------------------

TEST_CASE("LIFELINE_SCRIPT_ARGS gives one argument per line, spaces kept, empty lines dropped") {
  CHECK(split_script_args("--lr\n3 e-4\n") == std::vector<std::string>{"--lr", "3 e-4"});
  CHECK(split_script_args("\n\na\n\nb") == std::vector<std::string>{"a", "b"});
  CHECK(split_script_args("only") == std::vector<std::string>{"only"});
  CHECK(split_script_args("").empty());
  CHECK(split_script_args("\n\n").empty());
}

// ---- resubmission ---------------------------------------------------------------------

TEST_CASE("Command= with the script's arguments appended resubmits the bare script") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00",
                      "/home/u/run.sbatch --lr 3 e-4", "/home/u/work");
  REQUIRE(job["Command"] == "/home/u/run.sbatch --lr 3 e-4");
  auto r = resubmission(job, {"--lr", "3 e-4"}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/run.sbatch");
  CHECK(r->args == std::vector<std::string>{"--lr", "3 e-4"});
  CHECK(r->workdir == "/home/u/work");
}

TEST_CASE("a Command= with spaces in the path resubmits the whole path when the arguments are known") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00",
                      "/home/u/my runs/run.sbatch --epochs 3");
  auto r = resubmission(job, {"--epochs", "3"}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/my runs/run.sbatch");
}

TEST_CASE("a Command= with spaces in the path and no arguments is cut at its first space") {
  // Known limit: without LIFELINE_SCRIPT_ARGS, 22.05's Command= cannot tell a space in the
  // path from appended arguments; the supervisor has always taken the first word.
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00",
                      "/home/u/my runs/run.sbatch");
  auto r = resubmission(job, {}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/my");
}

TEST_CASE("a Command= with arguments but no LIFELINE_SCRIPT_ARGS resubmits the script without them") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00",
                      "/home/u/run.sbatch --lr 3");
  auto r = resubmission(job, {}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/run.sbatch");
  CHECK(r->args.empty());
}

TEST_CASE("a bare Command= resubmits as it is") {
  auto r = resubmission(in_state("RUNNING"), {}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/run.sbatch");
  CHECK(r->workdir == "/home/u");
}

TEST_CASE("arguments that Command= does not end with leave Command= whole") {
  auto job = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00",
                      "/home/u/run.sbatch --lr 3");
  auto r = resubmission(job, {"--lr", "4"}, "/submit");
  REQUIRE(r);
  CHECK(r->script == "/home/u/run.sbatch --lr 3");
  CHECK(r->args == std::vector<std::string>{"--lr", "4"});
}

TEST_CASE("a job Slurm shows without WorkDir is resubmitted from the submit directory") {
  JobFields job{{"JobState", "RUNNING"}, {"Command", "/home/u/run.sbatch"}};
  auto r = resubmission(job, {}, "/submit");
  REQUIRE(r);
  CHECK(r->workdir == "/submit");
}

TEST_CASE("a job whose script Slurm does not know cannot be resubmitted") {
  auto null_command = job_line("RUNNING", "01:00:00", "2026-12-05T10:00:00", "2026-12-05T11:00:00", "(null)");
  CHECK_FALSE(resubmission(null_command, {}, "/submit"));
  CHECK_FALSE(resubmission(JobFields{{"JobState", "RUNNING"}}, {}, "/submit"));
  CHECK_FALSE(resubmission(JobFields{{"Command", ""}}, {}, "/submit"));
  CHECK_FALSE(resubmission(std::nullopt, {"--lr", "3"}, "/submit"));
}

// ---- stop_budget_seconds --------------------------------------------------------------

TEST_CASE("SIGTERM budget is KillWait - 2 s") {
  uint64_t now = at("2026-12-05T10:05:00");
  CHECK(stop_budget_seconds(60, true, 30.0, std::nullopt, now) == 28.0);
  CHECK(stop_budget_seconds(60, true, 10.0, std::nullopt, now) == 8.0);
}

TEST_CASE("a SIGTERM budget cut by a tiny KillWait is still at least 1 s") {
  CHECK(stop_budget_seconds(60, true, 2.0, std::nullopt, 0) == 1.0);
}

TEST_CASE("a grace shorter than KillWait - 2 s is kept") {
  CHECK(stop_budget_seconds(10, true, 30.0, std::nullopt, 0) == 10.0);
}

TEST_CASE("KillWait does not cut the budget of a stop Slurm did not send by SIGTERM") {
  CHECK(stop_budget_seconds(60, false, 30.0, std::nullopt, 0) == 60.0);
}

TEST_CASE("an unknown or zero KillWait leaves the grace") {
  CHECK(stop_budget_seconds(60, true, std::nullopt, std::nullopt, 0) == 60.0);
  CHECK(stop_budget_seconds(60, true, 0.0, std::nullopt, 0) == 60.0);
}

TEST_CASE("the budget ends 2 s before the job's end") {
  uint64_t now = at("2026-12-05T10:05:00");
  CHECK(stop_budget_seconds(60, false, std::nullopt, now + 20 * kSecond, now) == 18.0);
  // Both cuts: the tighter wins.
  CHECK(stop_budget_seconds(60, true, 30.0, now + 10 * kSecond, now) == 8.0);
  CHECK(stop_budget_seconds(60, true, 10.0, now + 40 * kSecond, now) == 8.0);
}

TEST_CASE("a job end 3 s away or less, or past, leaves the budget uncut by it") {
  uint64_t now = at("2026-12-05T10:05:00");
  CHECK(stop_budget_seconds(60, false, std::nullopt, now + 3 * kSecond, now) == 60.0);
  CHECK(stop_budget_seconds(60, false, std::nullopt, now + 2 * kSecond, now) == 60.0);
  CHECK(stop_budget_seconds(60, false, std::nullopt, now - 10 * kSecond, now) == 60.0);
  CHECK(stop_budget_seconds(60, false, std::nullopt, now + 3 * kSecond + kSecond / 2, now) ==
        doctest::Approx(1.5));
}
