// Asynchronous checkpoints: what a background save writes, when it acks, how it coalesces
// requests, what a stop waits for, and what a crash mid-write leaves behind.
//
// Built twice (tests/meson.build): as a unit test of the client (no LibTorch), and with
// LIFELINE_ASYNC_E2E as an end-to-end test of the LibTorch helper and the example trainer.
#include <doctest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/checkpoint_store.h"
#include "store/manifest.h"
#include "support/process.h"
#include "support/client_env.h"
#include "support/temp_dir.h"
#include "support/tmpfs_mount.h"

#ifdef LIFELINE_ASYNC_E2E
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "lifeline/torch.h"
// LibTorch's glog headers redefine CHECK as glog's, which aborts the whole test binary on
// failure; these tests mean doctest's.
#undef CHECK
#define CHECK DOCTEST_CHECK
#endif

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::Process;
using lifeline::test::ClientEnv;
using lifeline::test::TempDir;

namespace {


std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string folder(const std::string& dir, uint64_t step) { return dir + "/" + checkpoint_folder_name(step); }

}  // namespace

#ifndef LIFELINE_ASYNC_E2E

namespace {

// Reproducible bytes for a checkpoint file.
std::string payload(size_t size, uint64_t seed) {
  std::string s(size, '\0');
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& c : s) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = char(x);
  }
  return s;
}

// A persist step that holds until the test opens the gate: a save kept in flight on purpose.
struct Gate {
  std::promise<void> started, open;
  std::shared_future<void> opened{open.get_future().share()};

  SnapshotFn snapshot(std::string data) {
    return [this, data = std::move(data)]() -> PersistFn {
      auto copy = std::make_shared<std::string>(data);
      return [this, copy](Checkpoint& c) {
        c.write_file("state.bin", copy->data(), copy->size() / 2);
        started.set_value();
        opened.wait();
        c.write_file("rest.bin", copy->data() + copy->size() / 2, copy->size() - copy->size() / 2);
      };
    };
  }
};

SnapshotFn plain_snapshot(std::string data) {
  return [data = std::move(data)]() -> PersistFn {
    auto copy = std::make_shared<std::string>(data);
    return [copy](Checkpoint& c) { c.write_file("state.bin", copy->data(), copy->size()); };
  };
}

// The helper child of the crash test: commits step 1, then dies inside the background write of
// step 2 when the parent kills it. Runs instead of doctest when LIFELINE_ASYNC_HELPER is set.
int crash_helper() {
  Client c = Client::from_env();
  std::string data = payload(4 << 20, 1);
  {
    auto w = c.begin_checkpoint(1);
    w.write_file("state.bin", data.data(), data.size());
    if (!w.commit()) return 1;
  }
  c.save_async(2, [&]() -> PersistFn {
    return [data](Checkpoint& w) {
      w.write_file("state.bin", data.data(), data.size() / 2);
      std::printf("mid-write %s\n", w.path().c_str());
      std::fflush(stdout);
      for (;;) pause();  // the parent kills us here
    };
  });
  c.wait_for_saves();
  return 2;  // not reached
}

const bool kIsHelper = [] {
  if (std::getenv("LIFELINE_ASYNC_HELPER")) _exit(crash_helper());
  return false;
}();

}  // namespace

TEST_CASE("an async save writes the same files, sizes and checksums as a synchronous save") {
  TempDir sync_dir, async_dir;
  std::string data = payload(3 << 20, 7);
  {
    ClientEnv env("", sync_dir.path());
    Client c = Client::from_env();
    auto w = c.begin_checkpoint(5);
    w.write_file("state.bin", data.data(), data.size());
    REQUIRE(w.commit({{"val_loss", 0.25}}));
  }
  {
    ClientEnv env("", async_dir.path());
    Client c = Client::from_env();
    CHECK(c.save_async(5, plain_snapshot(data), {{"val_loss", 0.25}}));
    CHECK(c.wait_for_saves());
    CHECK_FALSE(c.save_in_flight());
  }
  CheckpointInfo a = verify_checkpoint(folder(sync_dir.path(), 5), VerifyMode::full);
  CheckpointInfo b = verify_checkpoint(folder(async_dir.path(), 5), VerifyMode::full);
  REQUIRE(a.valid);
  REQUIRE(b.valid);
  Manifest ma = manifest_from_json(read_file(folder(sync_dir.path(), 5) + "/" + kManifestName));
  Manifest mb = manifest_from_json(read_file(folder(async_dir.path(), 5) + "/" + kManifestName));
  CHECK(ma.step == mb.step);
  CHECK(ma.metrics == mb.metrics);
  REQUIRE(ma.files.size() == mb.files.size());
  for (size_t i = 0; i < ma.files.size(); ++i) {
    CHECK(ma.files[i].path == mb.files[i].path);
    CHECK(ma.files[i].bytes == mb.files[i].bytes);
    CHECK(ma.files[i].checksum == mb.files[i].checksum);
  }
  CHECK(read_file(folder(sync_dir.path(), 5) + "/state.bin") == read_file(folder(async_dir.path(), 5) + "/state.bin"));
}

TEST_CASE("the ack of an async save comes only after its durable commit") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  uint64_t seq = block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(3));
  Gate gate;
  REQUIRE(c.save_async(3, gate.snapshot(payload(1 << 20, 3))));
  gate.started.get_future().wait();
  // Mid-write: nothing acked, nothing committed, the supervisor sees the trainer saving.
  CHECK(block.u64(kAckSeqOff).load() < seq);
  CHECK(block.u64(kCommitCountOff).load() == 0);
  CHECK(ClientState(block.u32(kClientStateOff).load()) == ClientState::saving);
  CHECK_FALSE(std::filesystem::exists(folder(d.path(), 3)));
  gate.open.set_value();
  REQUIRE(c.wait_for_saves());
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kAckStepOff).load() == 3);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK(verify_checkpoint(folder(d.path(), 3), VerifyMode::full).valid);
  CHECK_FALSE(c.should_checkpoint(4));
}

TEST_CASE("requests and every_steps points during a save in flight are coalesced into it") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  block.u64(kEveryStepsOff).store(10);
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  for (uint64_t s = 1; s < 10; ++s) REQUIRE_FALSE(c.should_checkpoint(s));
  REQUIRE(c.should_checkpoint(10));
  Gate gate;
  REQUIRE(c.save_async(10, gate.snapshot(payload(1 << 20, 10))));
  gate.started.get_future().wait();
  CHECK(c.save_in_flight());
  uint64_t seq = block.request(Reason::manual, false, 0);
  // One save in flight at most: neither the request nor the every_steps point at 20 starts another.
  for (uint64_t s = 11; s <= 20; ++s) CHECK_FALSE(c.should_checkpoint(s));
  CHECK_FALSE(c.should_exit());
  gate.open.set_value();
  REQUIRE(c.wait_for_saves());
  // The in-flight commit answered the request posted before it.
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(21));
  // A request after that commit is answered by the next save.
  uint64_t later = block.request(Reason::manual, false, 0);
  CHECK(c.should_checkpoint(22));
  REQUIRE(c.save_async(22, plain_snapshot("x")));
  REQUIRE(c.wait_for_saves());
  CHECK(block.u64(kAckSeqOff).load() == later);
  CHECK(block.u64(kCommitCountOff).load() == 2);
}

TEST_CASE("a second save waits for the one in flight: never two at once") {
  TempDir d;
  ClientEnv env("", d.path());
  Client c = Client::from_env();
  Gate gate;
  REQUIRE(c.save_async(1, gate.snapshot(payload(1 << 20, 1))));
  gate.started.get_future().wait();
  std::atomic<bool> gate_opened{false};
  bool first_committed_before_second_snapshot = false;
  std::promise<void> calling;
  // The client is used by one thread at a time: this thread until it is joined.
  std::thread second([&] {
    calling.set_value();
    c.save_async(2, [&]() -> PersistFn {
      first_committed_before_second_snapshot =
          gate_opened.load() && verify_checkpoint(folder(d.path(), 1), VerifyMode::full).valid;
      return [](Checkpoint& w) { w.write_file("state.bin", "2", 1); };
    });
  });
  calling.get_future().wait();
  gate_opened.store(true);
  gate.open.set_value();
  second.join();
  REQUIRE(c.wait_for_saves());
  CHECK(first_committed_before_second_snapshot);
  CHECK(verify_checkpoint(folder(d.path(), 2), VerifyMode::full).valid);
}

TEST_CASE("a stop request during a background save waits for it, and the supervisor sees the ack") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  block.request(Reason::periodic, false, 0);
  REQUIRE(c.should_checkpoint(7));
  Gate gate;
  REQUIRE(c.save_async(7, gate.snapshot(payload(1 << 20, 7))));
  gate.started.get_future().wait();
  uint64_t stop = block.request(Reason::stop_signal, true, 0);
  // The stop is not coalesced away: the trainer is told, so it reaches should_exit().
  CHECK(c.should_checkpoint(8));
  CHECK(c.should_exit());
  CHECK(block.u64(kAckSeqOff).load() < stop);
  bool snapshot_taken = false;
  std::thread opener([&] { gate.open.set_value(); });
  // Waits for the save in flight; its commit answered the stop, so no new snapshot is taken.
  CHECK_FALSE(c.save_async(8, [&]() -> PersistFn {
    snapshot_taken = true;
    return [](Checkpoint&) {};
  }));
  opener.join();
  CHECK_FALSE(snapshot_taken);
  CHECK(c.wait_for_saves());
  CHECK(block.u64(kAckSeqOff).load() == stop);
  CHECK(block.u64(kAckStepOff).load() == 7);
  CHECK(verify_checkpoint(folder(d.path(), 7), VerifyMode::full).valid);
}

TEST_CASE("a stop answered by a background commit before the trainer looked still reaches should_exit") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  Gate gate;
  REQUIRE(c.save_async(1, gate.snapshot(payload(1 << 20, 1))));
  gate.started.get_future().wait();
  uint64_t stop = block.request(Reason::stop_signal, true, 0);
  gate.open.set_value();
  REQUIRE(c.wait_for_saves());  // the trainer did not call should_checkpoint in between
  CHECK(block.u64(kAckSeqOff).load() == stop);
  CHECK(c.should_checkpoint(2));
  CHECK(c.should_exit());
  CHECK_FALSE(c.save_async(2, plain_snapshot("unused")));
  CHECK(block.u64(kCommitCountOff).load() == 1);
}

TEST_CASE("a failed background save is reported, not retried every step, and older checkpoints stay") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  REQUIRE(c.save_async(1, plain_snapshot("one")));
  REQUIRE(c.wait_for_saves());
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(2));
  REQUIRE(c.save_async(2, []() -> PersistFn {
    return [](Checkpoint&) { throw std::runtime_error("disk on fire"); };
  }));
  CHECK_FALSE(c.wait_for_saves());
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(3));
  auto choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
  CHECK(std::filesystem::directory_iterator(d.path()) != std::filesystem::directory_iterator());
  for (const auto& e : std::filesystem::directory_iterator(d.path()))
    CHECK(e.path().filename().string().rfind(".staging-", 0) != 0);  // the failed staging folder is gone
}

TEST_CASE("killing the trainer during a background write leaves the previous checkpoint the resume choice") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  Process child({"/proc/self/exe"}, {{"LIFELINE_ASYNC_HELPER", "1"},
                                     {"LIFELINE_CONTROL", block.name()},
                                     {"LIFELINE_CKPT_DIR", d.path()}});
  std::string line = child.wait_for_line("mid-write ");
  REQUIRE_MESSAGE(line != "", child.output());
  std::string staging = line.substr(line.find(' ') + 1);
  CHECK(std::filesystem::exists(staging + "/state.bin"));
  child.signal(SIGKILL);
  CHECK(child.wait() == 128 + SIGKILL);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK(block.u64(kAckStepOff).load() == 1);
  ResumeChoice choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
  CHECK(choice.skipped.empty());  // the half-written staging folder is not a checkpoint at all
  CHECK_FALSE(std::filesystem::exists(folder(d.path(), 2)));
}

#else  // LIFELINE_ASYNC_E2E: the LibTorch helper and the example trainer

namespace {

// A network with nested children, buffers (batch norm) and parameters of several shapes; with
// `wide` > 0, also a wide x wide parameter that training changes (through a small penalty).
struct SmallNet : torch::nn::Module {
  explicit SmallNet(int64_t wide_side = 0)
      : body(register_module("body", torch::nn::Sequential(torch::nn::Linear(8, 32), torch::nn::BatchNorm1d(32),
                                                           torch::nn::Tanh(), torch::nn::Linear(32, 32)))),
        head(register_module("head", torch::nn::Linear(32, 1))) {
    if (wide_side > 0) wide = register_parameter("wide", torch::randn({wide_side, wide_side}));
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor y = head(body->forward(x));
    return wide.defined() ? y + 1e-6 * (wide * wide).mean() : y;
  }
  torch::nn::Sequential body;
  torch::nn::Linear head;
  torch::Tensor wide;
};

void train(SmallNet& net, torch::optim::Optimizer& opt, int steps) {
  for (int i = 0; i < steps; ++i) {
    torch::Tensor x = torch::randn({16, 8});
    opt.step([&] {
      opt.zero_grad();
      torch::Tensor loss = torch::mse_loss(net.forward(x), torch::sin(x.sum(1, true)));
      loss.backward();
      return loss;
    });
  }
}

// Saves the same state synchronously and asynchronously (training on while the async save is
// written) and checks every file is byte-identical.
void check_same_bytes(SmallNet& net, torch::optim::Optimizer& opt) {
  TempDir sync_dir, async_dir;
  torch::manual_seed(3);
  train(net, opt, 3);
  {
    ClientEnv env("", sync_dir.path());
    Client c = Client::from_env();
    auto w = c.begin_checkpoint(3);
    torch_state::save(w, net, opt, 3);
    REQUIRE(w.commit());
  }
  {
    ClientEnv env("", async_dir.path());
    Client c = Client::from_env();
    std::promise<void> persisted_after_training;
    std::shared_future<void> go = persisted_after_training.get_future().share();
    REQUIRE(c.save_async(3, [&]() -> PersistFn {
      auto s = torch_state::snapshot(net, opt, 3);
      return [s, go](Checkpoint& w) {
        go.wait();  // the live state has moved on by now
        torch_state::persist(w, *s);
      };
    }));
    train(net, opt, 2);
    persisted_after_training.set_value();
    REQUIRE(c.wait_for_saves());
  }
  for (const char* f : {"model.pt", "optimizer.pt", "rng.pt", "counters.pt"}) {
    CAPTURE(f);
    std::string a = read_file(folder(sync_dir.path(), 3) + "/" + f);
    CHECK(a.size() > 0);
    CHECK(a == read_file(folder(async_dir.path(), 3) + "/" + f));
  }
}

using json = nlohmann::json;
using lifeline::test::binary;
using lifeline::test::run;
constexpr int kSteps = 240;

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

std::string write_policy(const TempDir& d) {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\nrestart:\n  backoff_seconds: 0\n";
  return path;
}

std::vector<std::string> train_cmd(const std::string& digest, int delay_ms, bool async) {
  std::vector<std::string> v = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(kSteps), "--seed", "7",
                                "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
                                "--digest-out", digest};
  if (async) v.push_back("--async");
  return v;
}

std::vector<std::string> lifeline_run(const TempDir& d, const std::vector<std::string>& cmd) {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", write_policy(d), "--ckpt-dir", d / "ckpt", "--"};
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

}  // namespace

TEST_CASE("an async LibTorch save (Adam) writes the same bytes as a synchronous save") {
  SmallNet net;
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3).amsgrad(true));
  check_same_bytes(net, opt);
}

TEST_CASE("an async LibTorch save of big tensors, pooled and copied on several threads, writes the same bytes") {
  SmallNet net(4200);  // 67 MiB per tensor: parameter and two Adam moments, each copied in parts
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));
  check_same_bytes(net, opt);
}

TEST_CASE("snapshots copy into the buffers prepare() mapped, reuse them, and copy a state of new shapes right") {
  auto big_copies = [](const torch_state::Snapshot& s) {
    std::set<const void*> p;
    for (const auto& t : s.copies)
      if (size_t(t.numel()) * t.element_size() >= (1u << 20)) p.insert(t.data_ptr());
    return p;
  };
  SmallNet net(600);  // 1.4 MiB per tensor: pooled
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));
  train(net, opt, 1);
  torch_state::prepare(net, opt);
  std::set<const void*> first;
  {
    auto s = torch_state::snapshot(net, opt, 1);
    first = big_copies(*s);
    REQUIRE(first.size() == 3);  // the parameter and its two Adam moments
    CHECK(torch::equal(s->copies.front(), net.wide));  // the module's own parameter is copied first
  }
  train(net, opt, 1);
  {
    auto s = torch_state::snapshot(net, opt, 2);
    CHECK(big_copies(*s) == first);  // the buffers the last snapshot gave back
  }
  // New shapes: the old buffers do not fit and are unmapped; the copy is still the state's.
  SmallNet wider(700);
  torch::optim::Adam opt2(wider.parameters(), torch::optim::AdamOptions(1e-3));
  train(wider, opt2, 2);
  check_same_bytes(wider, opt2);
}

TEST_CASE("an async LibTorch save (SGD with momentum) writes the same bytes as a synchronous save") {
  SmallNet net;
  torch::optim::SGD opt(net.parameters(), torch::optim::SGDOptions(1e-2).momentum(0.9));
  check_same_bytes(net, opt);
}

TEST_CASE("an async LibTorch save of an optimizer snapshot() serializes whole (LBFGS) writes the same bytes") {
  SmallNet net;
  torch::optim::LBFGS opt(net.parameters(), torch::optim::LBFGSOptions(0.1).max_iter(4).history_size(2));
  check_same_bytes(net, opt);
}

// A real full disk: a tmpfs too small for the state (needs root, as the test suite runs). The
// state fits in memory but not on the disk: 3 MiB of `wide` against 1 MiB.
TEST_CASE("a LibTorch save into a full disk neither throws nor terminates: commit() returns false, the staging folder is gone") {
  lifeline::test::TmpfsMount disk("size=1m");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  SmallNet net(900);
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));
  train(net, opt, 1);
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), disk / "ckpt");
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  auto w = c.begin_checkpoint(1);
  std::string staging = w.path();
  CHECK_NOTHROW(torch_state::save(w, net, opt, 1));  // before the fix: std::terminate
  CHECK(w.failed());
  CHECK_FALSE(std::filesystem::exists(staging));  // at once, before commit
  CHECK_FALSE(w.commit());
  CHECK(w.error().find("No space left on device") != std::string::npos);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(2));
  for (const auto& e : std::filesystem::directory_iterator(disk / "ckpt"))
    CHECK_FALSE(is_staging_name(e.path().filename().string()));
  // Training goes on: a smaller state still fits and commits.
  SmallNet small;
  torch::optim::Adam small_opt(small.parameters(), torch::optim::AdamOptions(1e-3));
  train(small, small_opt, 1);
  auto next = c.begin_checkpoint(3);
  torch_state::save(next, small, small_opt, 3);
  CHECK(next.commit());
}

TEST_CASE("an async LibTorch save into a full disk is reported as a failed save and training goes on") {
  lifeline::test::TmpfsMount disk("size=1m");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  SmallNet net(900);
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));
  train(net, opt, 1);
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), disk / "ckpt");
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  REQUIRE(torch_state::save_async(c, net, opt, 1));
  train(net, opt, 2);  // while the background save runs into the full disk
  CHECK_FALSE(c.wait_for_saves());
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK(block.u64(kCommitCountOff).load() == 0);
  CHECK_FALSE(c.should_checkpoint(4));
  for (const auto& e : std::filesystem::directory_iterator(disk / "ckpt"))
    CHECK_FALSE(is_staging_name(e.path().filename().string()));
}

TEST_CASE("a run with --async interrupted by SIGUSR1 acks its stop checkpoint and resumes to the uninterrupted digest") {
  TempDir ref;
  std::string out;
  REQUIRE(run(train_cmd(ref / "digest", 0, false), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}}) == 0);
  std::string reference = first_line(ref / "digest");
  REQUIRE(reference.size() == 64);

  TempDir d;
  std::random_device rd;
  int k = std::uniform_int_distribution<int>(5, kSteps - 15)(rd);
  CAPTURE(k);
  Process first(lifeline_run(d, train_cmd(d / "digest", 10, true)));
  REQUIRE(first.wait_for_line("step " + std::to_string(k) + " ") != "");
  first.signal(SIGUSR1);
  int rc = first.wait();
  CHECK_MESSAGE(rc == 75, first.output());
  CHECK(first.output().find("stop checkpoint done") != std::string::npos);  // the supervisor saw the ack
  CHECK(first.output().find("train-example: stopping at step") != std::string::npos);
  CHECK_FALSE(std::ifstream(d / "digest").good());

  rc = run(lifeline_run(d, train_cmd(d / "digest", 0, true)), &out);
  CHECK_MESSAGE(rc == 0, out);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("resumed from step ([0-9]+)")), out);
  CHECK(std::stoull(m[1]) > 0);
  CHECK(first_line(d / "digest") == reference);
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  for (const auto& cp : json::parse(listing)) CHECK(cp["valid"] == true);
}

#endif
