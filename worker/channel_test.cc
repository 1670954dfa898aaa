#include "worker/channel.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "common/scoped_fd.h"
#include "tests/testing/status_matchers.h"
#include "worker/shm_region.h"
#include "worker/spill.h"

namespace forq::worker {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

constexpr uint64_t kRing = 4096;

// Both ends of a link inside one process: a real sealed memfd region,
// eventfds and a socketpair, as forqd and a worker would have.
class Link {
 public:
  Link() {
    region_ = *ShmRegion::Create("test-link", SlotLayout::TotalBytes(kRing));
    view_ = ViewSlot(region_.data(), kRing);
    a_wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    b_wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int sv[2];
    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv);
    a_sock_.reset(sv[0]);
    b_sock_.reset(sv[1]);
    // a = forqd: produces submission, consumes completion.
    a_ = std::make_unique<Channel>(
        ShmRing(view_.submission_control, view_.submission_data, kRing),
        ShmRing(view_.completion_control, view_.completion_data, kRing),
        ChannelFds{b_wake_.get(), a_wake_.get(), a_sock_.get()}, 64 << 20);
    b_ = std::make_unique<Channel>(
        ShmRing(view_.completion_control, view_.completion_data, kRing),
        ShmRing(view_.submission_control, view_.submission_data, kRing),
        ChannelFds{a_wake_.get(), b_wake_.get(), b_sock_.get()}, 64 << 20);
  }
  Channel& forqd() { return *a_; }
  Channel& worker() { return *b_; }
  int worker_sock() const { return b_sock_.get(); }
  RingControl* completion_control() { return view_.completion_control; }
  char* completion_data() { return view_.completion_data; }
  int region_fd() const { return region_.fd(); }

 private:
  ShmRegion region_;
  SlotView view_{};
  ScopedFd a_wake_, b_wake_, a_sock_, b_sock_;
  std::unique_ptr<Channel> a_, b_;
};

TEST(ChannelTest, SmallMessagesTravelInline) {
  Link l;
  ASSERT_THAT(l.forqd().Send(1, "hi"), IsOk());
  auto m = l.worker().Receive();
  ASSERT_THAT(m, IsOk());
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->type, 1);
  EXPECT_EQ((*m)->body, "hi");
}

TEST(ChannelTest, LargeBodiesGoThroughTheSpillPathBothWays) {
  Link l;
  std::string big(1 << 20, 'q');
  big[12345] = 'Z';
  ASSERT_THAT(l.forqd().Send(1, big), IsOk());
  ASSERT_THAT(l.worker().Send(2, big + "!"), IsOk());
  auto m = l.worker().Receive();
  ASSERT_THAT(m, IsOk());
  ASSERT_TRUE(m->has_value());
  EXPECT_TRUE((*m)->body == big);
  auto back = l.forqd().Receive();
  ASSERT_THAT(back, IsOk());
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ((*back)->type, 2);
  EXPECT_TRUE((*back)->body == big + "!");
}

TEST(ChannelTest, SpilledFrameWithoutFdIsDataLoss) {
  Link l;
  ShmRing evil(l.completion_control(), l.completion_data(), kRing);
  uint64_t size = 1 << 20;
  ASSERT_THAT(evil.Push(2, kFrameSpilled,
                        absl::string_view(reinterpret_cast<char*>(&size), 8)),
              IsOk());
  EXPECT_THAT(l.forqd().Receive(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ChannelTest, SpillLargerThanItsFdIsDataLoss) {
  Link l;
  ASSERT_THAT(SendSpill(l.worker_sock(), "short"), IsOk());
  ShmRing evil(l.completion_control(), l.completion_data(), kRing);
  uint64_t size = 1000;
  ASSERT_THAT(evil.Push(2, kFrameSpilled,
                        absl::string_view(reinterpret_cast<char*>(&size), 8)),
              IsOk());
  EXPECT_THAT(l.forqd().Receive(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ChannelTest, UnsealedSpillFdIsDataLoss) {
  Link l;
  // Send a plain (unsealed) file descriptor instead of a sealed memfd.
  ScopedFd fd(memfd_create("unsealed", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(fd.get(), 100), 0);
  char byte = 's';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  int raw = fd.get();
  std::memcpy(CMSG_DATA(c), &raw, sizeof(int));
  ASSERT_EQ(sendmsg(l.worker_sock(), &msg, 0), 1);
  ShmRing evil(l.completion_control(), l.completion_data(), kRing);
  uint64_t size = 100;
  ASSERT_THAT(evil.Push(2, kFrameSpilled,
                        absl::string_view(reinterpret_cast<char*>(&size), 8)),
              IsOk());
  EXPECT_THAT(l.forqd().Receive(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ChannelTest, SpillOverLimitIsDataLoss) {
  Link l;
  ASSERT_THAT(SendSpill(l.worker_sock(), "x"), IsOk());
  ShmRing evil(l.completion_control(), l.completion_data(), kRing);
  uint64_t size = uint64_t{1} << 40;
  ASSERT_THAT(evil.Push(2, kFrameSpilled,
                        absl::string_view(reinterpret_cast<char*>(&size), 8)),
              IsOk());
  EXPECT_THAT(l.forqd().Receive(), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ChannelTest, SealedRegionCannotBeResized) {
  Link l;
  EXPECT_NE(ftruncate(l.region_fd(), 1), 0);
  EXPECT_EQ(errno, EPERM);
}

TEST(ChannelTest, ResetDiscardsQueuedSpillsAndFrames) {
  Link l;
  ASSERT_THAT(l.worker().Send(2, std::string(1 << 16, 'a')), IsOk());
  l.forqd().Reset();
  l.worker().Reset();
  ASSERT_THAT(l.worker().Send(2, "fresh"), IsOk());
  auto m = l.forqd().Receive();
  ASSERT_THAT(m, IsOk());
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->body, "fresh");
}

}  // namespace
}  // namespace forq::worker
