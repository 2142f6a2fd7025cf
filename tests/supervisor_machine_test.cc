// The supervisor's state x event table, cell by cell, with a fake clock (events carry their
// times) and recording effects; and docs/supervisor.md shows the same table as the code.
#include <doctest.h>
#include <signal.h>

#include <algorithm>
#include <functional>
#include <fstream>
#include <map>
#include <sstream>

#include "control/control_block.h"
#include "history/history.h"
#include "supervisor/machine.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::test;
using S = SupervisorState;
using E = SupervisorEvent;

namespace {

constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kT0 = 1000 * kSec;             // the fake monotonic clock at the first event
constexpr uint64_t kWall0 = 1'800'000'000 * kSec;  // and the wall clock

const char* timer_name(Timer t) {
  switch (t) {
    case Timer::tick: return "tick";
    case Timer::periodic: return "periodic";
    case Timer::time_limit: return "time_limit";
    case Timer::stop_deadline: return "stop_deadline";
    case Timer::term: return "term";
    case Timer::kill: return "kill";
    default: return "restart";
  }
}


// Effects that record what the machine asked for, in order, and answer from fields a test sets.
struct RecordingEffects final : Effects {
  TempDir dir;
  HistoryLog history{dir.path()};
  AttemptLog attempt_log{history, 0};
  std::vector<std::string> trace;
  std::map<Timer, uint64_t> armed;     // timer -> absolute monotonic time
  std::map<int, double> budgets;       // signal -> stop budget the relay posts with
  uint64_t seq = 0;                    // the control block's request_seq
  uint64_t last_deadline = 0;          // wall ns of the newest request or tightening
  RelayedStop relay_posted;            // what disarm_relay() returns
  StartOutcome start{true, true, 0, std::nullopt};
  std::optional<JobFields> job;        // show_job()'s answer
  RequeueAnswer requeue_answer;
  std::vector<CommitSeen> in_directory;
  std::optional<int> finished;

  AttemptLog& log() override { return attempt_log; }
  StartOutcome start_attempt(uint64_t attempt) override {
    trace.push_back("start_attempt " + std::to_string(attempt));
    return start;
  }
  void set_stop_budget(int signo, double seconds) override { budgets[signo] = seconds; }
  void arm_relay() override { trace.push_back("arm_relay"); }
  RelayedStop disarm_relay() override {
    trace.push_back("disarm_relay");
    return std::exchange(relay_posted, RelayedStop{});
  }
  uint64_t post_request(layout::Reason reason, bool stop, uint64_t deadline) override {
    trace.push_back(std::string("request ") + reason_name(reason) + (stop ? " stop" : ""));
    last_deadline = deadline;
    return ++seq;
  }
  void tighten_deadline(uint64_t deadline) override {
    trace.push_back("tighten");
    last_deadline = std::min(last_deadline, deadline);
  }
  void signal_trainer(int signo) override { trace.push_back(std::string("signal ") + (signo == SIGKILL ? "KILL" : signal_name(signo))); }
  void release_trainer() override { trace.push_back("release"); }
  void arm(Timer t, uint64_t at) override {
    trace.push_back(std::string("arm ") + timer_name(t));
    armed[t] = at;
  }
  void cancel(Timer t) override {
    trace.push_back(std::string("cancel ") + timer_name(t));
    armed.erase(t);
  }
  void ask_job_end(uint64_t attempt) override { trace.push_back("ask_job_end " + std::to_string(attempt)); }
  void ask_stop_cause(uint64_t attempt) override { trace.push_back("ask_stop_cause " + std::to_string(attempt)); }
  std::optional<JobFields> show_job() override {
    trace.push_back("show_job");
    return job;
  }
  RequeueAnswer requeue() override {
    trace.push_back("requeue");
    return requeue_answer;
  }
  RequeueAnswer resubmit() override {
    trace.push_back("resubmit");
    return requeue_answer;
  }
  std::vector<CommitSeen> commits_between(std::optional<uint64_t>, uint64_t, std::optional<uint64_t>) override {
    trace.push_back("commits_between");
    return in_directory;
  }
  void start_retention() override { trace.push_back("retention"); }
  void settle_retention(bool) override {}
  // The node-local tier: absent unless `drain_answer` is set (then its calls go into the trace).
  std::optional<bool> drain_answer;
  std::vector<uint64_t> committed_steps;
  std::optional<uint64_t> stop_deadline;
  double drain_lead = 0;
  void committed(uint64_t step, uint64_t) override { committed_steps.push_back(step); }
  void stop_begun(uint64_t deadline) override { stop_deadline = deadline; }
  std::optional<bool> settle_drain(bool stop) override {
    if (drain_answer) trace.push_back(stop ? "settle_drain stop" : "settle_drain");
    return drain_answer;
  }
  double drain_lead_seconds() override { return drain_lead; }
  void finish(int status) override {
    trace.push_back("finish " + std::to_string(status));
    finished = status;
  }

  bool did(const std::string& what) const { return std::find(trace.begin(), trace.end(), what) != trace.end(); }
  std::vector<nlohmann::json> events(const std::string& name) const {
    std::vector<nlohmann::json> out;
    for (auto& e : read_history_events(dir.path()))
      if (e.value("event", "") == name) out.push_back(e);
    return out;
  }
};

MachineConfig test_config() {
  MachineConfig c;
  c.policy.checkpoint.every_seconds = 60;
  c.policy.stop.hang_seconds = 30;
  c.policy.restart.backoff_seconds = 5;
  c.policy.restart.max_failures = 3;
  c.grace_seconds = 25;
  c.mode = RequeueMode::local;
  c.in_slurm = true;
  c.kill_wait_s = 30;
  return c;
}

// A machine with its fake effects and a fake clock; `at(s)` makes an event s seconds after kT0.
struct Rig {
  RecordingEffects fx;
  SupervisorMachine m;
  BlockView block;  // what the next tick reads

  explicit Rig(MachineConfig c = test_config(), MachineHistory h = {}) : m(std::move(c), std::move(h), fx) {}

  EventData at(double s, E kind) const {
    EventData e;
    e.kind = kind;
    e.mono_ns = kT0 + uint64_t(s * 1e9);
    e.wall_ns = kWall0 + uint64_t(s * 1e9);
    e.block = block;
    e.attempt = m.attempt();
    return e;
  }
  void send(double s, E kind) { m.dispatch(at(s, kind)); }
  void signal(double s, int signo, RelayedStop relayed = {}) {
    EventData e = at(s, E::stop_signal);
    e.signo = signo;
    e.relayed = relayed;
    m.dispatch(e);
  }
  void exit(double s, int status) {
    EventData e = at(s, E::child_exit);
    e.status = status;
    m.dispatch(e);
  }
  void commit(uint64_t step) {
    block.step = step;
    block.commit_count++;
    block.last_commit_step = step;
    block.last_commit_ns = 2 * kSec;
    block.ack_seq = block.request_seq = fx.seq;
  }
  void start() { m.begin(kT0, kWall0); }
};

// Brings a fresh rig into `state` through the machine's own transitions.
void drive_to(Rig& r, S state) {
  r.start();
  REQUIRE(r.m.state() == S::running);
  switch (state) {
    case S::running: break;
    case S::checkpointing: r.send(1, E::checkpoint_signal); break;
    case S::stopping: r.signal(1, SIGTERM); break;
    case S::draining:
      r.signal(1, SIGTERM);
      r.send(2, E::acked);
      break;
    case S::backoff: r.exit(1, 1); break;
    case S::done: r.exit(1, 0); break;
  }
  REQUIRE(r.m.state() == state);
  r.fx.trace.clear();
}

// One row of the table: for each state, the state after the event and effects it must ask for
// ("" = the cell ignores the event: no effect, no state change).
struct CellCase {
  S before;
  S after;
  std::vector<std::string> effects;
};

void check_row(E event, const std::vector<CellCase>& cells, const std::function<void(Rig&)>& prepare = {}) {
  REQUIRE(cells.size() == kSupervisorStates);
  for (const auto& c : cells) {
    std::string state = state_name(c.before);
    CAPTURE(state);
    Rig r;
    drive_to(r, c.before);
    if (prepare) prepare(r);
    r.fx.trace.clear();
    EventData e = r.at(10, event);
    if (event == E::stop_signal) e.signo = SIGTERM;
    if (event == E::tick) e.block.step = r.block.step + 1;
    if (event == E::job_end_known) e.end_ns = kWall0 + 3600 * kSec;
    if (event == E::stop_cause_known) e.job = JobFields{{"JobState", "PREEMPTED"}, {"Reason", "None"}};
    r.m.dispatch(e);
    CHECK(r.m.state() == c.after);
    if (c.effects.empty() && std::string(SupervisorMachine::cell_name(c.before, event)) == "-")
      CHECK(r.fx.trace.empty());
    for (const auto& what : c.effects) {
      CAPTURE(what);
      CHECK(r.fx.did(what));
    }
  }
}

}  // namespace

// ---- every cell, row by row ---------------------------------------------------------------

TEST_CASE("table: a stop signal requests a stop checkpoint while training, is coalesced while stopping, ends a backoff") {
  check_row(E::stop_signal, {{S::running, S::stopping, {"request stop_signal stop", "arm stop_deadline", "ask_stop_cause 0"}},
                             {S::checkpointing, S::stopping, {"request stop_signal stop", "arm stop_deadline"}},
                             {S::stopping, S::stopping, {}},
                             {S::draining, S::draining, {}},
                             {S::backoff, S::done, {"cancel restart", "finish 75"}},
                             {S::done, S::done, {}}});
}

TEST_CASE("table: SIGUSR2 requests a checkpoint only while running; otherwise one is already on its way") {
  check_row(E::checkpoint_signal, {{S::running, S::checkpointing, {"request manual"}},
                                   {S::checkpointing, S::checkpointing, {}},
                                   {S::stopping, S::stopping, {}},
                                   {S::draining, S::draining, {}},
                                   {S::backoff, S::backoff, {}},
                                   {S::done, S::done, {}}});
}

TEST_CASE("table: SIGHUP changes nothing in any state") {
  std::vector<CellCase> cells;
  for (size_t s = 0; s < kSupervisorStates; ++s) cells.push_back({S(s), S(s), {}});
  check_row(E::hangup, cells);
  for (size_t s = 0; s < kSupervisorStates; ++s) {
    Rig r;
    drive_to(r, S(s));
    r.send(10, E::hangup);
    CHECK(r.fx.trace.empty());
  }
}

TEST_CASE("table: a tick reads the block and re-arms itself while a trainer runs; not between attempts") {
  check_row(E::tick, {{S::running, S::running, {"arm tick"}},
                      {S::checkpointing, S::checkpointing, {"arm tick"}},
                      {S::stopping, S::stopping, {"arm tick"}},
                      {S::draining, S::draining, {"arm tick"}},
                      {S::backoff, S::backoff, {}},
                      {S::done, S::done, {}}});
}

TEST_CASE("table: an ack ends a checkpoint request; the stop's ack starts the wait for the trainer's exit") {
  check_row(E::acked, {{S::running, S::running, {}},
                       {S::checkpointing, S::running, {}},
                       {S::stopping, S::draining, {"disarm_relay", "cancel stop_deadline", "arm term"}},
                       {S::draining, S::draining, {}},
                       {S::backoff, S::backoff, {}},
                       {S::done, S::done, {}}});
}

TEST_CASE("table: no progress stops the trainer as hung while running and while a checkpoint request is pending") {
  check_row(E::no_progress, {{S::running, S::draining, {"disarm_relay", "arm term"}},
                             {S::checkpointing, S::draining, {"disarm_relay", "arm term"}},
                             {S::stopping, S::stopping, {}},
                             {S::draining, S::draining, {}},
                             {S::backoff, S::backoff, {}},
                             {S::done, S::done, {}}});
}

TEST_CASE("table: a period's end requests a checkpoint while running and is skipped while one is pending") {
  check_row(E::periodic_due, {{S::running, S::checkpointing, {"request periodic", "arm periodic"}},
                              {S::checkpointing, S::checkpointing, {"arm periodic"}},
                              {S::stopping, S::stopping, {}},
                              {S::draining, S::draining, {}},
                              {S::backoff, S::backoff, {}},
                              {S::done, S::done, {}}});
}

TEST_CASE("table: the job's end arms the time-limit stop while training; while stopping it only narrows budgets") {
  check_row(E::job_end_known, {{S::running, S::running, {"arm time_limit"}},
                               {S::checkpointing, S::checkpointing, {"arm time_limit"}},
                               {S::stopping, S::stopping, {}},
                               {S::draining, S::draining, {}},
                               {S::backoff, S::backoff, {}},
                               {S::done, S::done, {}}});
}

TEST_CASE("table: the time limit's lead stops training with a checkpoint; otherwise it is ignored") {
  check_row(E::time_limit_due, {{S::running, S::stopping, {"disarm_relay", "request time_limit stop", "arm stop_deadline"}},
                                {S::checkpointing, S::stopping, {"request time_limit stop", "arm stop_deadline"}},
                                {S::stopping, S::stopping, {}},
                                {S::draining, S::draining, {}},
                                {S::backoff, S::backoff, {}},
                                {S::done, S::done, {}}});
}

TEST_CASE("table: Slurm's answer about the stop's cause is taken while stopping or draining") {
  check_row(E::stop_cause_known, {{S::running, S::running, {}},
                                  {S::checkpointing, S::checkpointing, {}},
                                  {S::stopping, S::stopping, {}},
                                  {S::draining, S::draining, {}},
                                  {S::backoff, S::backoff, {}},
                                  {S::done, S::done, {}}});
  for (S s : {S::stopping, S::draining}) {
    CAPTURE(state_name(s));
    Rig r;
    drive_to(r, s);
    EventData e = r.at(3, E::stop_cause_known);
    e.job = JobFields{{"JobState", "PREEMPTED"}, {"Reason", "None"}};
    r.m.dispatch(e);
    auto views = r.fx.events("slurm_view");
    REQUIRE(views.size() == 1);
    CHECK(views[0]["job_state"] == "PREEMPTED");
    r.exit(4, 0);
    CHECK(r.fx.events("attempt_end").at(0)["end_reason"] == "preempted");
  }
}

TEST_CASE("table: the stop deadline drains the trainer only while the stop checkpoint is awaited") {
  check_row(E::stop_deadline, {{S::running, S::running, {}},
                               {S::checkpointing, S::checkpointing, {}},
                               {S::stopping, S::draining, {"disarm_relay", "arm term"}},
                               {S::draining, S::draining, {}},
                               {S::backoff, S::backoff, {}},
                               {S::done, S::done, {}}});
}

TEST_CASE("table: draining escalates to SIGTERM then SIGKILL; the timers mean nothing elsewhere") {
  check_row(E::term_due, {{S::running, S::running, {}},
                          {S::checkpointing, S::checkpointing, {}},
                          {S::stopping, S::stopping, {}},
                          {S::draining, S::draining, {"signal TERM", "arm kill"}},
                          {S::backoff, S::backoff, {}},
                          {S::done, S::done, {}}});
  check_row(E::kill_due, {{S::running, S::running, {}},
                          {S::checkpointing, S::checkpointing, {}},
                          {S::stopping, S::stopping, {}},
                          {S::draining, S::draining, {"signal KILL"}},
                          {S::backoff, S::backoff, {}},
                          {S::done, S::done, {}}});
}

TEST_CASE("table: the trainer's exit ends the attempt: completed while training, stopped (75, no requeue here) while stopping") {
  check_row(E::child_exit, {{S::running, S::done, {"release", "finish 0"}},
                            {S::checkpointing, S::done, {"release", "finish 0"}},
                            {S::stopping, S::done, {"release", "show_job", "finish 75"}},
                            {S::draining, S::done, {"release", "show_job", "finish 75"}},
                            {S::backoff, S::backoff, {}},
                            {S::done, S::done, {}}});
}

TEST_CASE("table: the end of a backoff starts the next attempt") {
  check_row(E::restart_due, {{S::running, S::running, {}},
                             {S::checkpointing, S::checkpointing, {}},
                             {S::stopping, S::stopping, {}},
                             {S::draining, S::draining, {}},
                             {S::backoff, S::running, {"start_attempt 1", "arm_relay", "arm tick", "ask_job_end 1"}},
                             {S::done, S::done, {}}});
}

TEST_CASE("table: the leader's request is taken while training (a stop stops); ignored once stopping") {
  check_row(E::peer_request, {{S::running, S::checkpointing, {"request manual", "arm tick"}},
                              {S::checkpointing, S::checkpointing, {"request manual", "arm tick"}},
                              {S::stopping, S::stopping, {}},
                              {S::draining, S::draining, {}},
                              {S::backoff, S::backoff, {}},
                              {S::done, S::done, {}}});
  Rig r;
  drive_to(r, S::running);
  EventData e = r.at(10, E::peer_request);
  e.peer_stop = true;
  r.m.dispatch(e);
  CHECK(r.m.state() == S::stopping);
  CHECK(r.fx.did("request stop_signal stop"));
  CHECK(r.fx.did("arm stop_deadline"));
}

TEST_CASE("table: a lost peer drains the trainer at once while it runs; nothing to do otherwise") {
  check_row(E::peer_lost, {{S::running, S::draining, {"disarm_relay", "arm term"}},
                           {S::checkpointing, S::draining, {"disarm_relay", "arm term"}},
                           {S::stopping, S::draining, {"disarm_relay", "arm term"}},
                           {S::draining, S::draining, {}},
                           {S::backoff, S::backoff, {}},
                           {S::done, S::done, {}}});
}

TEST_CASE("every cell of the table is covered by a row test above") {
  // The rows above are one per event; this keeps the list honest when an event is added.
  CHECK(kSupervisorEvents == 17);
  CHECK(kSupervisorStates == 6);
}

TEST_CASE("docs/supervisor.md shows the machine's table") {
  std::ifstream in(std::string(LIFELINE_SOURCE_DIR) + "/docs/supervisor.md");
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string doc = ss.str();
  const std::string begin = "<!-- table: generated from SupervisorMachine::table_markdown() -->\n";
  const std::string end = "<!-- end of table -->";
  auto b = doc.find(begin);
  auto e = doc.find(end);
  REQUIRE(b != std::string::npos);
  REQUIRE(e != std::string::npos);
  CHECK(doc.substr(b + begin.size(), e - b - begin.size()) == SupervisorMachine::table_markdown());
}

// ---- the two bugs issue 22 found by reading ------------------------------------------------

TEST_CASE("a trainer that hangs with a periodic request pending is stopped as hung, and the next attempt starts") {
  Rig r;
  r.start();
  r.block.step = 10;
  r.block.client_state = layout::ClientState::attached;
  r.send(1, E::tick);
  r.block.step = 11;
  r.send(20, E::tick);  // the last step: the silence counts from here
  r.send(30, E::periodic_due);
  REQUIRE(r.m.state() == S::checkpointing);
  r.send(40, E::tick);  // 20 s without a step: not yet
  CHECK(r.m.state() == S::checkpointing);
  r.send(55, E::tick);  // 35 s > stop.hang_seconds (30), not saving
  CHECK(r.m.state() == S::draining);
  auto hangs = r.fx.events("hang");
  REQUIRE(hangs.size() == 1);
  CHECK(hangs[0]["step"] == 11);
  r.exit(56, 137);
  CHECK(r.m.state() == S::backoff);
  CHECK(r.fx.events("attempt_end").at(0)["end_reason"] == "failed");
}

TEST_CASE("a save may take 4 x stop.hang_seconds before it is a hang; the same silence without a save is one at once") {
  Rig r;
  r.start();
  r.block.step = 10;
  r.block.client_state = layout::ClientState::attached;
  r.send(1, E::tick);
  r.send(2, E::checkpoint_signal);
  r.block.client_state = layout::ClientState::saving;
  r.send(3, E::tick);    // the save began: progress
  r.send(100, E::tick);  // 97 s into the save: more than 30 s, less than 120 s
  CHECK(r.m.state() == S::checkpointing);
  CHECK(r.fx.events("hang").empty());
  r.block.client_state = layout::ClientState::attached;  // the save is over: progress, the clock restarts
  r.send(101, E::tick);
  r.send(120, E::tick);
  CHECK(r.m.state() == S::checkpointing);
  r.send(132, E::tick);  // 31 s without a step, not saving
  CHECK(r.m.state() == S::draining);

  Rig stuck;  // a save that never ends is a hang too, after 4 x 30 s
  stuck.start();
  stuck.send(1, E::checkpoint_signal);
  stuck.block.client_state = layout::ClientState::saving;
  stuck.send(2, E::tick);
  stuck.send(121, E::tick);
  CHECK(stuck.m.state() == S::checkpointing);
  stuck.send(123, E::tick);
  CHECK(stuck.m.state() == S::draining);
  CHECK(stuck.fx.events("hang").at(0)["client_state"] == "saving");
}

TEST_CASE("the stop deadline counts from the signal's arrival; Slurm's answer is asked, never awaited") {
  Rig r;
  r.start();
  r.fx.trace.clear();
  r.signal(5, SIGUSR1);
  // Asked, not called: the machine goes on before Slurm answers.
  CHECK(r.fx.did("ask_stop_cause 0"));
  CHECK_FALSE(r.fx.did("show_job"));
  REQUIRE(r.fx.armed.count(Timer::stop_deadline));
  CHECK(r.fx.armed[Timer::stop_deadline] == kT0 + 5 * kSec + 25 * kSec);
  CHECK(r.fx.last_deadline == kWall0 + 5 * kSec + 25 * kSec);
  // The answer comes 40 s later (a slow slurmctld): the deadline has already passed and drained.
  r.send(30, E::stop_deadline);
  CHECK(r.m.state() == S::draining);
  EventData late = r.at(45, E::stop_cause_known);
  late.job = JobFields{{"JobState", "RUNNING"}, {"EndTime", "Unknown"}};
  r.m.dispatch(late);
  CHECK(r.fx.armed.count(Timer::stop_deadline) == 0);
  CHECK(r.fx.events("checkpoint_timeout").size() == 1);
}

// ---- semantics around the cells -------------------------------------------------------------

TEST_CASE("a stop the relay already posted keeps its sequence number and only tightens the deadline") {
  Rig r;
  r.start();
  r.fx.trace.clear();
  r.fx.seq = 7;
  r.signal(2, SIGUSR1, RelayedStop{7, SIGUSR1, 0});
  CHECK(r.fx.did("tighten"));
  CHECK_FALSE(r.fx.did("request stop_signal stop"));
  auto req = r.fx.events("checkpoint_request");
  REQUIRE(req.size() == 1);
  CHECK(req[0]["seq"] == 7);
}

TEST_CASE("SIGTERM from Slurm gets KillWait - 2 s; other stop signals get the grace period") {
  MachineConfig c = test_config();
  c.grace_seconds = 60;
  Rig r(c);
  r.start();
  CHECK(r.fx.budgets[SIGTERM] == doctest::Approx(28));
  CHECK(r.fx.budgets[SIGUSR1] == doctest::Approx(60));
  r.signal(1, SIGTERM);
  CHECK(r.fx.armed[Timer::stop_deadline] == kT0 + 1 * kSec + 28 * kSec);
}

TEST_CASE("the time-limit stop is armed the lead before the job's end: p95 of commit times x 3 + 10 s, at least 20 s") {
  MachineHistory h;
  h.commit_seconds = std::vector<double>(20, 10.0);  // p95 10 s -> lead 40 s
  Rig r(test_config(), h);
  r.start();
  EventData e = r.at(0, E::job_end_known);
  e.end_ns = kWall0 + 1000 * kSec;
  r.m.dispatch(e);
  CHECK(r.fx.armed[Timer::time_limit] == kT0 + 960 * kSec);
  Rig fresh;  // no commits yet: the 20 s floor
  fresh.start();
  EventData f = fresh.at(0, E::job_end_known);
  f.end_ns = kWall0 + 1000 * kSec;
  fresh.m.dispatch(f);
  CHECK(fresh.fx.armed[Timer::time_limit] == kT0 + 980 * kSec);
}

TEST_CASE("a Slurm answer meant for an earlier attempt is ignored") {
  Rig r;
  r.start();
  r.exit(1, 1);
  r.send(10, E::restart_due);
  REQUIRE(r.m.attempt() == 1);
  r.fx.trace.clear();
  EventData e = r.at(11, E::job_end_known);
  e.attempt = 0;
  e.end_ns = kWall0 + 100 * kSec;
  r.m.dispatch(e);
  CHECK_FALSE(r.fx.did("arm time_limit"));
}

TEST_CASE("failed attempts restart after a doubling backoff and give up after max_failures in a row") {
  Rig r;
  r.block.step = 5;  // each attempt trains a while before it fails
  r.start();
  r.exit(1, 3);
  CHECK(r.m.state() == S::backoff);
  CHECK(r.fx.armed[Timer::restart] == kT0 + 6 * kSec);  // 5 s
  r.send(6, E::restart_due);
  r.exit(7, 3);
  CHECK(r.fx.armed[Timer::restart] == kT0 + 17 * kSec);  // 10 s
  r.send(17, E::restart_due);
  r.exit(18, 3);
  CHECK(r.m.state() == S::done);
  CHECK(r.fx.finished == 3);
  auto restarts = r.fx.events("requeue");
  REQUIRE(restarts.size() == 2);
  CHECK(restarts[1]["backoff_s"] == 10.0);
}

TEST_CASE("a commit resets the failures in a row") {
  MachineConfig c = test_config();
  c.policy.restart.max_failures = 2;
  Rig r(c);
  r.block.step = 5;  // each attempt trains a while before it fails
  r.start();
  r.exit(1, 3);  // 1 in a row
  r.send(6, E::restart_due);
  r.commit(50);
  r.send(7, E::tick);
  r.exit(8, 3);  // committed: 0 in a row
  r.block = BlockView{};  // the next attempt's fresh control block
  r.block.step = 55;
  r.send(13, E::restart_due);
  r.exit(14, 3);  // 1 in a row: restarts again (2 in a row would give up)
  CHECK(r.m.state() == S::backoff);
  r.send(24, E::restart_due);
  r.exit(25, 3);
  CHECK(r.m.state() == S::done);
}

TEST_CASE("a stop with its checkpoint committed requeues with scontrol; a spent budget exits 75") {
  MachineConfig c = test_config();
  c.mode = RequeueMode::scontrol;
  c.policy.restart.max_requeues = 2;
  Rig r(c, MachineHistory{0, 0, 1, {}});
  r.fx.requeue_answer.outcome = {true, "scontrol requeue 42"};
  r.start();
  r.signal(1, SIGTERM);
  r.commit(100);
  r.send(2, E::tick);
  CHECK(r.m.state() == S::draining);
  r.exit(3, 0);
  CHECK(r.fx.did("requeue"));
  CHECK(r.fx.finished == 0);
  CHECK(r.fx.events("requeue").at(0)["result"] == "requeued");
  CHECK(r.fx.events("attempt_end").at(0)["stop_checkpoint"]["state"] == "committed");

  Rig spent(c, MachineHistory{0, 0, 2, {}});
  spent.start();
  spent.signal(1, SIGTERM);
  spent.exit(2, 0);
  CHECK_FALSE(spent.fx.did("requeue"));
  CHECK(spent.fx.finished == 75);
  CHECK(spent.fx.events("requeue").at(0)["result"] == "budget exhausted");
}

TEST_CASE("a failed scontrol requeue of a job Slurm is taking back counts as requeued by Slurm") {
  MachineConfig c = test_config();
  c.mode = RequeueMode::scontrol;
  Rig r(c);
  r.fx.requeue_answer.outcome = {false, "Requested operation is presently disabled"};
  r.fx.requeue_answer.job = JobFields{{"JobState", "PREEMPTED"}};
  r.start();
  r.signal(1, SIGTERM);
  r.exit(2, 0);
  CHECK(r.fx.finished == 0);
  auto rq = r.fx.events("requeue").at(0);
  CHECK(rq["result"] == "requeued");
  CHECK(rq["detail"].get<std::string>().rfind("by Slurm (preemption)", 0) == 0);
}

TEST_CASE("a stop without a commit reports the missing stop checkpoint, the resume step and the steps lost") {
  Rig r;
  r.fx.start.resumed_step = 40;
  r.start();
  r.block.step = 55;
  r.send(1, E::tick);
  r.signal(2, SIGTERM);
  r.send(27, E::stop_deadline);
  r.exit(28, 143);
  auto end = r.fx.events("attempt_end").at(0);
  CHECK(end["stop_checkpoint"]["state"] == "missing");
  CHECK(end["stop_checkpoint"]["resume_step"] == 40);
  CHECK(end["stop_checkpoint"]["lost_steps"] == 15);
  CHECK(r.fx.finished == 75);
}

TEST_CASE("commits faster than the polls are read from the directory and recorded in order") {
  Rig r;
  r.start();
  r.fx.in_directory = {{20, 100}, {40, 100}};
  r.block.commit_count = 3;
  r.block.last_commit_step = 60;
  r.block.step = 60;
  r.send(1, E::tick);
  auto commits = r.fx.events("checkpoint_commit");
  REQUIRE(commits.size() == 3);
  CHECK(commits[0]["step"] == 20);
  CHECK(commits[2]["step"] == 60);
  CHECK(r.fx.did("retention"));
}

TEST_CASE("a trainer that cannot start after its attempt was recorded ends that attempt as failed") {
  Rig r;
  r.fx.start = StartOutcome{false, true, 127, std::nullopt};
  r.start();
  CHECK(r.m.state() == S::done);
  CHECK(r.fx.finished == 127);
  CHECK(r.fx.events("attempt_end").at(0)["end_reason"] == "failed");
}

// ---- several supervisors of one job ----------------------------------------------------------

TEST_CASE("a follower never requeues: it leaves 0 for the leader's scontrol requeue, 75 when the leader is lost") {
  MachineConfig c = test_config();
  c.mode = RequeueMode::scontrol;
  c.peer = MachineConfig::Peer::follower;
  {
    Rig r(c);
    drive_to(r, S::stopping);
    r.commit(40);
    r.block.request_flags = layout::kFlagStop;
    r.exit(5, 0);
    CHECK_FALSE(r.fx.did("requeue"));
    CHECK(r.fx.finished == 0);
  }
  {
    Rig r(c);
    drive_to(r, S::running);
    EventData e = r.at(3, E::peer_lost);
    e.peer_why = "the job's leader (supervisor 0) is lost (connection closed)";
    r.m.dispatch(e);
    r.exit(4, 137);
    CHECK_FALSE(r.fx.did("requeue"));
    CHECK(r.fx.finished == 75);
    auto ends = r.fx.events("attempt_end");
    REQUIRE(ends.size() == 1);
    CHECK(ends[0]["end_reason"] == "peer_lost");
  }
}

TEST_CASE("the leader requeues once after a lost peer; no supervisor of several restarts in place") {
  MachineConfig c = test_config();
  c.mode = RequeueMode::scontrol;
  c.peer = MachineConfig::Peer::leader;
  c.policy.restart.max_requeues = 3;
  {
    Rig r(c);
    r.fx.requeue_answer.outcome.ok = true;
    drive_to(r, S::running);
    EventData e = r.at(3, E::peer_lost);
    e.peer_why = "supervisor 2 is lost (connection closed)";
    r.m.dispatch(e);
    r.exit(4, 143);
    CHECK(std::count(r.fx.trace.begin(), r.fx.trace.end(), "requeue") == 1);
    CHECK(r.fx.finished == 0);
  }
  c.mode = RequeueMode::local;
  Rig r(c);
  drive_to(r, S::running);
  r.exit(2, 1);
  CHECK(r.m.state() == S::done);
  CHECK(r.fx.finished == 1);
  CHECK_FALSE(r.fx.did("arm restart"));
}

TEST_CASE("a follower leaves periodic checkpoints to the leader's timer") {
  MachineConfig c = test_config();
  c.peer = MachineConfig::Peer::follower;
  Rig follower(c);
  follower.start();
  CHECK_FALSE(follower.fx.did("arm periodic"));
  c.peer = MachineConfig::Peer::leader;
  Rig leader(c);
  leader.start();
  CHECK(leader.fx.did("arm periodic"));
}

TEST_CASE("a second SIGINT while the stop checkpoint is awaited stops the trainer at once; a second SIGTERM does not") {
  Rig r;
  drive_to(r, S::running);
  r.signal(1, SIGINT);
  REQUIRE(r.m.state() == S::stopping);
  r.signal(2, SIGINT);
  CHECK(r.m.state() == S::draining);
  CHECK(r.fx.armed.at(Timer::term) == r.at(2, E::tick).mono_ns);  // SIGTERM now, no patience
  Rig t;
  drive_to(t, S::running);
  t.signal(1, SIGTERM);
  t.signal(2, SIGTERM);
  CHECK(t.m.state() == S::stopping);
}

TEST_CASE("a failure retrying cannot change stops at once: exit 127 or 126 before the first step, or the same exit twice before it") {
  for (int status : {127, 126}) {
    CAPTURE(status);
    Rig r;
    r.start();
    r.exit(1, status);
    CHECK(r.m.state() == S::done);
    CHECK(r.fx.finished == status);
    auto requeues = r.fx.events("requeue");
    REQUIRE(requeues.size() == 1);
    CHECK(requeues[0]["result"] == "not requeued");
    CHECK(requeues[0]["detail"].get<std::string>().find("permanent failure") != std::string::npos);
  }
  Rig r;  // ModuleNotFoundError: exit 1 before any step, twice
  r.start();
  r.exit(1, 1);
  CHECK(r.m.state() == S::backoff);  // once may be bad luck (a node's disk, a race)
  r.send(6, E::restart_due);
  r.exit(7, 1);
  CHECK(r.m.state() == S::done);
  CHECK(r.fx.finished == 1);
  Rig other;  // two different failures before the first step: retried as usual
  other.start();
  other.exit(1, 1);
  other.send(6, E::restart_due);
  other.exit(7, 2);
  CHECK(other.m.state() == S::backoff);
}

TEST_CASE("with a node-local tier every commit goes to its drain, the stop waits for it before the requeue, and says if it was drained") {
  MachineConfig c = test_config();
  c.mode = RequeueMode::scontrol;
  Rig r(c);
  r.fx.drain_answer = false;
  r.fx.requeue_answer.outcome = {true, "scontrol requeue 42"};
  r.start();
  r.send(1, E::checkpoint_signal);
  r.commit(50);
  r.send(2, E::tick);
  CHECK(r.fx.committed_steps == std::vector<uint64_t>{50});
  r.signal(3, SIGTERM);
  REQUIRE(r.fx.stop_deadline.has_value());
  CHECK(*r.fx.stop_deadline == r.fx.last_deadline);
  r.commit(60);
  r.send(4, E::tick);
  CHECK(r.fx.committed_steps == std::vector<uint64_t>{50, 60});  // the stop checkpoint too
  r.exit(5, 0);
  auto settle = std::find(r.fx.trace.begin(), r.fx.trace.end(), "settle_drain stop");
  auto requeue = std::find(r.fx.trace.begin(), r.fx.trace.end(), "requeue");
  REQUIRE(settle != r.fx.trace.end());
  REQUIRE(requeue != r.fx.trace.end());
  CHECK(settle < requeue);
  CHECK(r.fx.events("attempt_end").at(0)["stop_checkpoint"]["drained"] == false);

  Rig done(c);
  done.fx.drain_answer = true;
  done.start();
  done.exit(1, 0);
  CHECK(done.fx.did("settle_drain"));
  CHECK(done.fx.finished == 0);
}

TEST_CASE("the time-limit lead adds the drain of the newest checkpoint at the measured speed") {
  Rig r;
  r.fx.drain_lead = 15;
  r.start();
  EventData e = r.at(0, E::job_end_known);
  e.end_ns = kWall0 + 1000 * kSec;
  r.m.dispatch(e);
  CHECK(r.fx.armed[Timer::time_limit] == kT0 + (1000 - 20 - 15) * kSec);
}
