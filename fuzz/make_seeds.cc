// Writes the seed corpora under fuzz/corpus/ from forq's own encoders and
// route table, so the seeds follow the formats when they change:
//   build/fuzz/fuzz_make_seeds fuzz/corpus
// Existing files of the same name are overwritten; others (inputs found by
// fuzzing, crash reproducers) are kept.
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

#include "server/http/json_transcoder.h"
#include "server/http/route_table.h"
#include "worker/manager_protocol.h"
#include "worker/protocol.h"
#include "worker/shm_ring.h"

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

void Write(const std::string& dir, const std::string& name,
           const std::string& data) {
  mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/" + name, std::ios::binary) << data;
}

// [flags][tail u16][ring bytes] holding `bodies` as frames.
std::string RingInput(
    uint8_t flags, const std::vector<std::pair<uint16_t, std::string>>& bodies,
    bool spilled_last = false) {
  using namespace forq::worker;
  RingControl control{};
  alignas(64) static char data[ShmRing::kMinCapacity];
  std::memset(data, 0, sizeof(data));
  ShmRing ring(&control, data, ShmRing::kMinCapacity);
  for (size_t i = 0; i < bodies.size(); ++i) {
    const bool spill = spilled_last && i + 1 == bodies.size();
    (void)ring.Push(bodies[i].first, spill ? kFrameSpilled : 0,
                    bodies[i].second);
  }
  const uint64_t tail = control.tail.value.load();
  std::string out;
  out.push_back(static_cast<char>(flags));
  out.push_back(static_cast<char>(tail & 0xff));
  out.push_back(static_cast<char>(tail >> 8));
  out.append(data, tail);
  return out;
}

void FrameSeeds(const std::string& dir) {
  using namespace forq::worker;
  AssignMessage assign{7, "task-1", 1, 5'000'000'000, "echo", "payload"};
  ResultMessage result{7, 0, false, "", "result", 1234};
  ResultMessage failed{7, 9, true, "no such kind", "", 1};
  ProgressMessage progress{7, 0.5, "half"};
  CallMessage call{7, 1, "request"};
  CallReplyMessage call_reply{7, 1, 0, "", "reply"};
  auto t = [](MessageType m) { return static_cast<uint16_t>(m); };
  Write(dir, "assign",
        RingInput(0, {{t(MessageType::kAssign), Encode(assign)}}));
  Write(dir, "ready_result",
        RingInput(0, {{t(MessageType::kReady), Encode(ReadyMessage{42})},
                      {t(MessageType::kResult), Encode(result)},
                      {t(MessageType::kResult), Encode(failed)}}));
  Write(dir, "progress_call",
        RingInput(0, {{t(MessageType::kProgress), Encode(progress)},
                      {t(MessageType::kCall), Encode(call)},
                      {t(MessageType::kCallReply), Encode(call_reply)},
                      {t(MessageType::kSkipped), Encode(SkippedMessage{8})}}));
  std::string size(8, '\0');
  size[0] = 8;
  Write(dir, "spilled",
        RingInput(1,
                  {{t(MessageType::kResult), Encode(result)},
                   {t(MessageType::kResult), size}},
                  /*spilled_last=*/true) +
            std::string(64, 'x'));
  Write(dir, "spill_closed",
        RingInput(4, {{t(MessageType::kResult), size}}, true));
}

void ManagerSeeds(const std::string& dir) {
  using namespace forq::worker;
  const std::string sep = "\xF0\x9F\x94\x80";
  int i = 0;
  for (const forq::v1::ManagerOpSpec& spec : forq::v1::kManagerOps) {
    ManagerRequest r;
    r.type = spec.type;
    r.op = spec.op;
    r.name = "obj";
    r.key = "k";
    r.value = "1";
    r.values = {"1", "2"};
    r.items = {{"a", "1"}};
    r.has_index = true;
    r.delta = "1";
    r.timeout_ms = 5;
    r.maxsize = 4;
    r.length = 4;
    r.typecode = "i";
    r.ttl_ms = 1000;
    const std::string one = EncodeManagerRequest(r);
    Write(dir,
          absl::StrCat("op", i++, "_", ManagerTypeName(spec.type), "_",
                       ManagerOpName(spec.op)),
          one + sep + one);
  }
  ManagerReply reply;
  reply.value = "v";
  reply.found = true;
  reply.values = {"a"};
  reply.items = {{"k", "v"}};
  Write(dir, "reply", EncodeManagerReply(reply));
}

// Sets every singular scalar field of `m` to a sample value.
void Fill(Message* m, int depth) {
  const auto* refl = m->GetReflection();
  const auto* d = m->GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        refl->SetString(m, f, "x1");
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        refl->SetInt32(m, f, 1);
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        refl->SetInt64(m, f, 1);
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        refl->SetUInt32(m, f, 1);
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        refl->SetUInt64(m, f, 1);
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        refl->SetDouble(m, f, 1.5);
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        refl->SetFloat(m, f, 1.5);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        refl->SetBool(m, f, true);
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        if (f->enum_type()->value_count() > 1) {
          refl->SetEnum(m, f, f->enum_type()->value(1));
        }
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        if (depth < 2 && !f->containing_oneof()) {
          Fill(refl->MutableMessage(m, f), depth + 1);
        }
        break;
    }
  }
}

void RestSeeds(const std::string& rest_dir, const std::string& route_dir) {
  using namespace forq::server;
  auto table = RouteTable::Build(RouteTable::ForqServices());
  if (!table.ok()) std::abort();
  const std::vector<Route>& routes = (*table)->routes();
  for (size_t i = 0; i < routes.size(); ++i) {
    const Route& r = routes[i];
    std::string body;
    if (!r.body.empty()) {
      std::unique_ptr<Message> m = NewMessage(
          r.body == "*" ? r.rpc->input_type() : r.body_field->message_type());
      Fill(m.get(), 0);
      body = *MessageToJson(*m, RenderOptions{});
      if (r.client_streaming()) body = body + "\n" + body + "\n";
    }
    std::string in;
    in.push_back(static_cast<char>(i));
    in.push_back('\0');
    Write(rest_dir, absl::StrCat("route", i), in + "x1" + '\0' + '\0' + body);
    // The route matcher: method index, path with variables filled.
    static const char* const kMethods[] = {"GET", "POST", "PUT", "DELETE"};
    char method = 0;
    for (char k = 0; k < 4; ++k) {
      if (r.http_method == kMethods[static_cast<int>(k)]) method = k;
    }
    std::string path;
    for (const Route::Segment& s : r.segments) {
      path += "/" + (s.var.empty() ? s.literal : "a%2Fb" + s.suffix);
    }
    Write(route_dir, absl::StrCat("route", i),
          std::string(1, method) + path + "?text=1&x=%41+b" + '\0' + "yes");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  mkdir(root.c_str(), 0755);
  FrameSeeds(root + "/fuzz_frame_decoder");
  ManagerSeeds(root + "/fuzz_manager_codec");
  RestSeeds(root + "/fuzz_rest_json", root + "/fuzz_route_match");
  return 0;
}
