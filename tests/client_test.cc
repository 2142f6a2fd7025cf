// The trainer-side client: inert alone, fast when idle, and every request answered by a commit.
#include <doctest.h>
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/checkpoint_store.h"
#include "store/manifest.h"
#include "support/client_env.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::ClientEnv;
using lifeline::test::TempDir;


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
