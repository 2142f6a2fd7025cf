// The trainer-side client: inert alone, fast when idle, and every request answered by a commit.
#include <doctest.h>
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/checkpoint_store.h"
#include "store/manifest.h"
#include "support/client_env.h"
#include "support/temp_dir.h"
#include "support/tmpfs_mount.h"

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::ClientEnv;
using lifeline::test::TempDir;
using lifeline::test::TmpfsMount;


TEST_CASE("outside a supervisor the client is inert and reads resume info from the environment") {
  ClientEnv env("", "");
  unsetenv("LIFELINE_CONTROL");
  setenv("LIFELINE_RESUME_FROM", "/data/ckpt/step-000000000040", 1);
  setenv("LIFELINE_RESUME_STEP", "40", 1);
  Client c = Client::from_env();
  CHECK_FALSE(c.active());
  for (uint64_t s = 1; s <= 2000; ++s) CHECK_FALSE(c.should_checkpoint(s));
  CHECK_FALSE(c.should_exit());
  REQUIRE(c.resume());
  CHECK(c.resume()->step == 40);
  CHECK(c.resume()->path == "/data/ckpt/step-000000000040");
  // No handler installed: SIGUSR1 keeps its default disposition.
  struct sigaction sa {};
  sigaction(SIGUSR1, nullptr, &sa);
  CHECK((sa.sa_handler == SIG_DFL));
}

TEST_CASE("the resume kind is warm for a fork and continue for the run's own checkpoint; a bad value is refused") {
  ClientEnv env("", "");
  unsetenv("LIFELINE_CONTROL");
  setenv("LIFELINE_RESUME_FROM", "/src/ckpt/step-000000000040", 1);
  setenv("LIFELINE_RESUME_STEP", "40", 1);
  setenv("LIFELINE_RESUME_KIND", "warm", 1);
  {
    Client c = Client::from_env();
    REQUIRE(c.resume());
    CHECK(c.resume()->kind == "warm");
    CHECK(c.resume()->warm());
    CHECK(c.resume()->step == 40);
  }
  for (const char* v : {"continue", ""}) {
    setenv("LIFELINE_RESUME_KIND", v, 1);
    Client c = Client::from_env();
    REQUIRE(c.resume());
    CHECK(c.resume()->kind == "continue");
    CHECK_FALSE(c.resume()->warm());
  }
  unsetenv("LIFELINE_RESUME_KIND");  // a supervisor from before the variable
  CHECK(Client::from_env().resume()->kind == "continue");
  setenv("LIFELINE_RESUME_KIND", "cold", 1);
  CHECK_THROWS_WITH_AS(Client::from_env(), doctest::Contains("LIFELINE_RESUME_KIND='cold'"), std::runtime_error);
  unsetenv("LIFELINE_RESUME_KIND");
  CHECK(resume_kind_from_env("warm") == "warm");
}

TEST_CASE("outside lifeline run a checkpoint goes into ./checkpoints, where lifeline run looks by default") {
  ClientEnv env("", "");
  unsetenv("LIFELINE_CKPT_DIR");
  TempDir d;
  auto old = std::filesystem::current_path();
  std::filesystem::current_path(d.path());
  {
    Client c = Client::from_env();
    auto ck = c.begin_checkpoint(3);
    ck.write_file("w.bin", "x", 1);
    CHECK(ck.commit());
  }
  std::filesystem::current_path(old);
  ResumeChoice choice = choose_resume(d / "checkpoints");
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 3);
}

TEST_CASE("a supervisor request makes should_checkpoint true once and the commit acks it") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  REQUIRE(c.active());
  CHECK_FALSE(c.should_checkpoint(1));
  uint64_t seq = block.request(Reason::manual, false, 0);
  CHECK(c.should_checkpoint(2));
  CHECK(block.u64(kCurrentStepOff).load() == 2);
  auto ck = c.begin_checkpoint(2);
  ck.write_file("w.bin", "ab", 2);
  CHECK(ck.commit({{"val_loss", 0.5}}));
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kAckStepOff).load() == 2);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(3));
  CHECK_FALSE(c.should_exit());
  CHECK(verify_checkpoint(d / "step-000000000002", VerifyMode::full).valid);
}

TEST_CASE("every_steps from the policy makes exactly the multiples due") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  block.u64(kEveryStepsOff).store(20);
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  std::vector<uint64_t> due;
  for (uint64_t s = 1; s <= 100; ++s)
    if (c.should_checkpoint(s)) due.push_back(s);
  CHECK(due == std::vector<uint64_t>{20, 40, 60, 80, 100});
}

TEST_CASE("SIGTERM, SIGUSR1 and SIGINT to the trainer become a stop request, not death") {
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) {
    CAPTURE(sig);
    TempDir d;
    ControlBlock block = ControlBlock::create("test");
    ClientEnv env(block.name(), d.path());
    Client c = Client::from_env();
    CHECK_FALSE(c.should_checkpoint(1));
    raise(sig);  // the handler runs before raise returns
    CHECK(c.should_checkpoint(2));
    CHECK(c.should_exit());
    CHECK(block.u32(kTrainerSignalOff).load() == uint32_t(sig));
    CHECK(Reason(block.u32(kRequestReasonOff).load()) == Reason::trainer_signal);
    auto ck = c.begin_checkpoint(2);
    ck.write_file("w.bin", "ab", 2);  // the store refuses an empty checkpoint
    CHECK(ck.commit());
    CHECK(block.u64(kAckSeqOff).load() == block.u64(kRequestSeqOff).load());
  }
}

TEST_CASE("a failed save is reported, keeps older checkpoints, and training can go on") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  {
    auto ok = c.begin_checkpoint(1);
    ok.write_file("w.bin", "ab", 2);
    CHECK(ok.commit());
  }
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(2));
  auto bad = c.begin_checkpoint(2);
  std::filesystem::create_symlink("/etc/hostname", bad.path() + "/link");
  CHECK_FALSE(bad.commit());
  CHECK(bad.error().find("symbolic link") != std::string::npos);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(3));  // not retried on every step
  auto choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
}

namespace {
std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
std::string manifest_of(const std::string& folder) { return read_all(folder + "/" + kManifestName); }
}  // namespace

TEST_CASE("a streamed file is checksummed while written: same manifest entry as write_file, no read-back") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  std::string bytes(3u << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char((i * 2654435761u) >> 13);

  std::string whole_path, streamed_path;
  {
    auto w = c.begin_checkpoint(10);
    w.write_file("sub/state.bin", bytes.data(), bytes.size());
    REQUIRE(w.commit());
    whole_path = d.path() + "/" + checkpoint_folders(d.path()).back().second;
  }
  {
    auto w = c.begin_checkpoint(20);
    CheckpointFile f = w.open_file("sub/state.bin");
    for (size_t off = 0; off < bytes.size(); off += 100000) f.write(bytes.data() + off, std::min<size_t>(100000, bytes.size() - off));
    f.close();
    CHECK_THROWS_AS(f.write("x", 1), std::logic_error);
    // Changed on disk after close (same size): commit trusts the streamed checksum, so the
    // change shows at verify: commit did not read the file back.
    {
      std::fstream out(w.path() + "/sub/state.bin", std::ios::in | std::ios::out | std::ios::binary);
      out.seekp(12345);
      out.put(char(~bytes[12345]));
    }
    REQUIRE(w.commit());
    streamed_path = d.path() + "/" + checkpoint_folders(d.path()).back().second;
  }
  Manifest whole = manifest_from_json(manifest_of(whole_path));
  Manifest streamed = manifest_from_json(manifest_of(streamed_path));
  REQUIRE(whole.files.size() == 1);
  REQUIRE(streamed.files.size() == 1);
  CHECK(streamed.files[0].path == "sub/state.bin");
  CHECK(streamed.files[0].bytes == bytes.size());
  CHECK(streamed.files[0].checksum == whole.files[0].checksum);
  CHECK(verify_checkpoint(whole_path, VerifyMode::full).valid);
  CHECK_FALSE(verify_checkpoint(streamed_path, VerifyMode::full).valid);
}

TEST_CASE("a file not closed fails the commit, keeps older checkpoints, and cannot be written afterwards") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  {
    auto ok = c.begin_checkpoint(1);
    ok.write_file("w.bin", "ab", 2);
    REQUIRE(ok.commit());
  }
  {
    auto w = c.begin_checkpoint(5);
    CheckpointFile f = w.open_file("log.txt");
    f.write("partial", 7);
    CHECK_FALSE(w.commit());
    CHECK(w.error().find("log.txt was not closed") != std::string::npos);
    CHECK_THROWS_AS(f.write("more", 4), std::logic_error);
    CHECK_THROWS_AS(f.close(), std::logic_error);
  }
  {
    auto w = c.begin_checkpoint(6);
    { CheckpointFile dropped = w.open_file("model.bin"); }  // as after an exception mid-write
    CHECK_FALSE(w.commit());
    CHECK(w.error().find("model.bin was not closed") != std::string::npos);
  }
  auto choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
  CHECK(checkpoint_folders(d.path()).size() == 1);
}

TEST_CASE("a large streamed file, dropped from the page cache as it is written back, commits the exact bytes") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  Client c = Client::from_env();
  // Several 8 MiB write-behind chunks and an unaligned tail; odd-sized writes throughout.
  std::string bytes((21u << 20) + 12345, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char((i * 2654435761u) >> 11);
  auto w = c.begin_checkpoint(7);
  CheckpointFile f = w.open_file("model.bin");
  for (size_t off = 0, n = 1; off < bytes.size(); off += n, n = n * 3 % 4000037 + 1)
    f.write(bytes.data() + off, std::min(n, bytes.size() - off));
  f.close();
  REQUIRE(w.commit());
  std::string folder = d.path() + "/" + checkpoint_folders(d.path()).back().second;
  CHECK(read_all(folder + "/model.bin") == bytes);
  CHECK(verify_checkpoint(folder, VerifyMode::full).valid);
}

// A real full disk: a tmpfs of 1 MiB (needs root, as the test suite runs).
namespace {
bool staging_left(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (is_staging_name(e.path().filename().string())) return true;
  return false;
}
}  // namespace

TEST_CASE("a write error on a full disk fails the checkpoint at once: its staging folder is gone before commit, which reports it") {
  TmpfsMount disk("size=1m");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), disk / "ckpt");
  Client c = Client::from_env();
  {
    auto first = c.begin_checkpoint(1);
    first.write_file("w.bin", "old", 3);
    REQUIRE(first.commit());
  }
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(2));
  uint64_t free_before = disk.free_bytes();
  auto w = c.begin_checkpoint(2);
  std::string staging = w.path();
  CheckpointFile f = w.open_file("model.bin");
  std::string piece(64 << 10, 'x');
  CHECK_THROWS_AS(
      for (int i = 0; i < 32; ++i) f.write(piece.data(), piece.size()),  // 2 MiB into 1 MiB
      std::runtime_error);
  // At once, before commit: the partial file's space is back for everyone else (the history).
  CHECK_FALSE(std::filesystem::exists(staging));
  CHECK(disk.free_bytes() >= free_before);
  CHECK(w.failed());
  CHECK(w.error().find("No space left on device") != std::string::npos);
  CHECK_THROWS_AS(f.write("y", 1), std::runtime_error);  // the rest of the state is refused
  CHECK_THROWS_AS(w.write_file("other.bin", "z", 1), std::runtime_error);
  CHECK_FALSE(w.commit());
  CHECK(w.error().find("No space left on device") != std::string::npos);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK(ClientState(block.u32(kClientStateOff).load()) == ClientState::attached);
  CHECK_FALSE(c.should_checkpoint(3));  // not retried on every step
  CHECK_FALSE(staging_left(disk / "ckpt"));
  auto choice = choose_resume(disk / "ckpt");
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
  // Training goes on, and so does saving once there is room.
  auto next = c.begin_checkpoint(4);
  next.write_file("w.bin", "new", 3);
  CHECK(next.commit());
}

TEST_CASE("a checkpoint dropped after a write error, without commit, is still reported as a failed save") {
  TmpfsMount disk("size=1m");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), disk / "ckpt");
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  std::string big(2 << 20, 'x');
  try {
    auto w = c.begin_checkpoint(1);
    w.write_file("model.bin", big.data(), big.size());
    FAIL("2 MiB fitted into a 1 MiB file system");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("No space left on device") != std::string::npos);
  }
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(2));
  CHECK_FALSE(staging_left(disk / "ckpt"));
}

TEST_CASE("begin_checkpoint where no folder can be made returns a failed checkpoint, not an exception, and training goes on") {
  TmpfsMount disk("size=1m,nr_inodes=6");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), disk / "ckpt");
  std::filesystem::create_directories(disk / "ckpt");
  Client c = Client::from_env();
  // Use up the inodes: no folder can be made any more.
  for (int i = 0; std::ofstream(disk / ("f" + std::to_string(i))).good() && i < 100; ++i) {
  }
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  std::optional<Checkpoint> w;
  CHECK_NOTHROW(w.emplace(c.begin_checkpoint(1)));
  REQUIRE(w);
  CHECK(w->failed());
  CHECK_FALSE(std::filesystem::exists(w->path()));
  CHECK_THROWS_AS(w->write_file("a.bin", "a", 1), std::runtime_error);
  CHECK_FALSE(w->commit());
  CHECK(w->error().find("No space left on device") != std::string::npos);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(2));
}
