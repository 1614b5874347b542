// Reader of torch.save files (pytorch_model.bin, state dicts, training checkpoints that hold one): the
// zip format of torch.save (torch >= 1.6), i.e. records <archive>/data.pkl (a pickle) and
// <archive>/data/<key> (raw storage bytes).
//
// The file is memory-mapped and its zip directory read directly (zip_directory.h): torch.save stores
// every record uncompressed with its data 64-byte aligned, so each storage is a view of the mapping
// and loading reads only data.pkl and the directory; tensors (tied weights, views with offsets and
// strides) are views of those storages, never copies. A compressed record (not what torch.save
// writes, but legal in a zip) is extracted into memory by PyTorchStreamReader instead.
//
// torch::jit::Unpickler (1.13) cannot read state dicts: it turns collections.OrderedDict into None
// before any type resolver is asked, and it trusts the stack layout of its input. So this file has
// its own small pickle machine for the subset that state dicts use, where every pop is checked and
// every value lives in one arena (no recursive destruction, cycles are harmless).
#include "hooklens/pytorch_bin.h"
#include "hooklens/mapped_file.h"

#include "hooklens/error.h"
#include <hooklens/message_text.h>
#include "zip_directory.h"

#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string_view>
#include <unordered_map>

namespace hooklens {
namespace {

// A storage record, shared by every tensor that views it (tied weights share one).
struct StorageRecord {
  c10::Storage storage;
  c10::ScalarType type;
};

// The archive as mapped: its records by name without the archive's top directory ("data.pkl",
// "data/0"), each read only when asked for.
class TorchArchive {
 public:
  TorchArchive(const std::filesystem::path& file, std::shared_ptr<const MappedFile> mapped);

  bool has(const std::string& name) const { return records_.count(name) != 0; }
  // A small record (data.pkl, byteorder): in place when stored (its CRC checked), else extracted.
  std::string_view small_record(const std::string& name);
  // Record data/<key> as the storage of `numel` elements of `type`: a view of the mapping when
  // stored, extracted into memory when compressed. Throws Error when the record is missing or does
  // not hold exactly that many bytes.
  c10::Storage storage(const std::string& key, c10::ScalarType type, std::int64_t numel);

 private:
  const ZipRecord& record(const std::string& name) const;  // throws Error when missing
  at::DataPtr extract(const std::string& name, const ZipRecord& r);

  std::filesystem::path file_;
  std::shared_ptr<const MappedFile> mapped_;
  std::unordered_map<std::string, ZipRecord> records_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> extractor_;  // made for the first compressed record
  std::vector<at::DataPtr> extracted_;  // small records that were compressed
};

struct Value {
  enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  std::int64_t integer = 0;
  double real = 0;            // Float
  std::string text;           // String; Global as "module.name"
  std::vector<Value*> items;  // Tuple, List; Dict as key, value, key, value...
  StorageRecord* storage = nullptr;  // Storage, and the storage a Tensor views
  at::Tensor tensor;
};

using Kind = Value::Kind;

const char* kind_name(Kind k) {
  static const char* names[] = {"None", "bool",   "int",    "float",   "str", "tuple",
                                "list", "dict",   "global", "storage", "tensor"};
  return names[static_cast<int>(k)];
}

c10::ScalarType storage_dtype(const std::string& global) {
  static const std::unordered_map<std::string, c10::ScalarType> types = {
      {"torch.FloatStorage", c10::kFloat},   {"torch.DoubleStorage", c10::kDouble},
      {"torch.HalfStorage", c10::kHalf},     {"torch.BFloat16Storage", c10::kBFloat16},
      {"torch.LongStorage", c10::kLong},     {"torch.IntStorage", c10::kInt},
      {"torch.ShortStorage", c10::kShort},   {"torch.CharStorage", c10::kChar},
      {"torch.ByteStorage", c10::kByte},     {"torch.BoolStorage", c10::kBool},
  };
  const auto it = types.find(global);
  if (it == types.end()) throw Error(fmt::format("unsupported storage type {}", brief_text(global)));
  return it->second;
}

// Bound the memory a hostile pickle can make us spend; a state dict needs ~15 values per tensor.
// Values live once in the arena and containers hold pointers, so an object the pickle refers to
// many times (its memo) is never copied: kMaxItems bounds those pointers, i.e. the work of every
// later walk over the containers.
constexpr std::size_t kMaxValues = std::size_t(1) << 22;
constexpr std::size_t kMaxItems = std::size_t(1) << 24;
constexpr std::size_t kMaxRank = 64;  // dimensions of a tensor

// Runs a pickle program. Errors are thrown as Error without the file name; the caller adds it.
class PickleMachine {
 public:
  PickleMachine(std::string_view pickle, TorchArchive& archive)
      : data_(pickle.data()), size_(pickle.size()), archive_(archive) {}

  Value* run();

 private:
  // ---- input
  std::uint8_t byte() {
    need(1);
    return static_cast<std::uint8_t>(data_[pos_++]);
  }
  template <typename T>
  T little() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string bytes(std::uint64_t n) {
    need(n);
    std::string s(data_ + pos_, n);
    pos_ += n;
    return s;
  }
  std::string line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (!nl) throw Error("pickle ends inside a GLOBAL name");
    std::string s = bytes(static_cast<const char*>(nl) - (data_ + pos_));
    ++pos_;
    return s;
  }
  void need(std::uint64_t n) const {
    if (n > size_ - pos_) throw Error("pickle data ends early");
  }

  // ---- values and stack
  Value* make(Kind kind) {
    if (arena_.size() >= kMaxValues) throw Error("pickle holds too many values for a state dict");
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  Value* make_int(std::int64_t v) {
    Value* x = make(Kind::Int);
    x->integer = v;
    return x;
  }
  Value* make_string(std::string s, Kind kind = Kind::String) {
    Value* x = make(kind);
    x->text = std::move(s);
    return x;
  }
  void push(Value* v) {
    if (stack_.size() >= kMaxValues) throw Error("pickle stack grows too deep for a state dict");
    stack_.push_back(v);
  }
  Value* pop() {
    if (stack_.size() <= floor()) throw Error("pickle stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) throw Error("pickle stack underflow");
    return stack_.back();
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the last MARK, and the mark.
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) throw Error("pickle uses a MARK that was never set");
    std::vector<Value*> items(stack_.begin() + marks_.back(), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value* expect(Value* v, Kind kind, const char* what) {
    if (v->kind != kind)
      throw Error(fmt::format("pickle has a {} where {} needs a {}", kind_name(v->kind), what, kind_name(kind)));
    return v;
  }
  std::vector<std::int64_t> int_tuple(Value* v, const char* what) {
    expect(v, Kind::Tuple, what);
    std::vector<std::int64_t> out;
    for (Value* x : v->items) out.push_back(expect(x, Kind::Int, what)->integer);
    return out;
  }
  void memo_put(std::uint64_t index) { memo_[index] = top(); }
  Value* memo_get(std::uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) throw Error(fmt::format("pickle refers to memo entry {} that was never set", index));
    return it->second;
  }

  // ---- opcodes that do real work
  bool step();
  Value* long1(std::size_t n);
  Value* binfloat();
  Value* tuple(std::vector<Value*> items) {
    count_items(items.size());
    Value* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }
  void count_items(std::size_t n) {
    items_ += n;
    if (items_ > kMaxItems) throw Error("pickle holds too many items for a state dict");
  }
  void add_to(Value* container, const std::vector<Value*>& items);
  Value* persistent_load(Value* pid);
  Value* call(Value* callable, Value* args);
  Value* rebuild_tensor(const std::vector<Value*>& args);

  const char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  TorchArchive& archive_;
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Value*> memo_;
  std::unordered_map<std::string, StorageRecord> storages_;
  std::size_t items_ = 0;  // pointers held by all containers
  Value none_;
};

Value* PickleMachine::run() {
  while (step()) {
  }
  if (stack_.size() != 1 || !marks_.empty()) throw Error("pickle does not end with exactly one value");
  return stack_.back();
}

// Executes one opcode; false at STOP.
bool PickleMachine::step() {
  const std::uint8_t op = byte();
  switch (op) {
    case 0x80: {  // PROTO
      const int protocol = byte();
      if (protocol < 2 || protocol > 5) throw Error(fmt::format("unsupported pickle protocol {}", protocol));
      break;
    }
    case 0x95: little<std::uint64_t>(); break;  // FRAME: only a read-ahead hint
    case '.': return false;                     // STOP
    case '(': marks_.push_back(stack_.size()); break;
    case 'N': push(&none_); break;
    case 0x88:
    case 0x89: {  // NEWTRUE, NEWFALSE
      Value* b = make(Kind::Bool);
      b->integer = op == 0x88;
      push(b);
      break;
    }
    case 'K': push(make_int(byte())); break;                     // BININT1
    case 'M': push(make_int(little<std::uint16_t>())); break;    // BININT2
    case 'J': push(make_int(little<std::int32_t>())); break;     // BININT
    case 0x8a: push(long1(byte())); break;                       // LONG1
    case 'G': push(binfloat()); break;                           // BINFLOAT
    case 'X': push(make_string(bytes(little<std::uint32_t>()))); break;  // BINUNICODE
    case 0x8c: push(make_string(bytes(byte()))); break;                  // SHORT_BINUNICODE
    case 0x8d: push(make_string(bytes(little<std::uint64_t>()))); break; // BINUNICODE8
    case 'c': {  // GLOBAL module\nname\n
      std::string module = line();
      push(make_string(module + "." + line(), Kind::Global));
      break;
    }
    case 0x93: {  // STACK_GLOBAL
      Value* name = expect(pop(), Kind::String, "STACK_GLOBAL");
      Value* module = expect(pop(), Kind::String, "STACK_GLOBAL");
      push(make_string(module->text + "." + name->text, Kind::Global));
      break;
    }
    case 'q': memo_put(byte()); break;                        // BINPUT
    case 'r': memo_put(little<std::uint32_t>()); break;       // LONG_BINPUT
    case 0x94: memo_put(memo_.size()); break;                 // MEMOIZE
    case 'h': push(memo_get(byte())); break;                  // BINGET
    case 'j': push(memo_get(little<std::uint32_t>())); break; // LONG_BINGET
    case ')': push(tuple({})); break;                         // EMPTY_TUPLE
    case 't': push(tuple(pop_mark())); break;                 // TUPLE
    case 0x85:
    case 0x86:
    case 0x87: {  // TUPLE1..3
      std::vector<Value*> items(op - 0x84);
      for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
      push(tuple(std::move(items)));
      break;
    }
    case ']': push(make(Kind::List)); break;  // EMPTY_LIST
    case '}': push(make(Kind::Dict)); break;  // EMPTY_DICT
    case 'a': {                               // APPEND
      Value* item = pop();
      add_to(top(), {item});
      break;
    }
    case 's': {  // SETITEM
      Value* value = pop();
      Value* key = pop();
      add_to(top(), {key, value});
      break;
    }
    case 'e':    // APPENDS
    case 'u': {  // SETITEMS
      std::vector<Value*> items = pop_mark();
      add_to(top(), items);
      break;
    }
    case 'Q': push(persistent_load(pop())); break;  // BINPERSID
    case 'R': {                                     // REDUCE
      Value* args = pop();
      Value* callable = pop();
      push(call(callable, args));
      break;
    }
    case 'b':  // BUILD: only OrderedDict._metadata and tensor attributes get here; both unused
      pop();
      top();
      break;
    default:
      throw Error(fmt::format("unsupported pickle opcode 0x{:02x} at byte {}", op, pos_ - 1));
  }
  return true;
}

Value* PickleMachine::long1(std::size_t n) {
  if (n > 8) throw Error("pickle integer is wider than 64 bits");
  std::string raw = bytes(n);
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t(static_cast<std::uint8_t>(raw[i])) << (8 * i);
  if (n > 0 && n < 8 && (raw[n - 1] & 0x80)) v |= ~std::uint64_t(0) << (8 * n);  // sign-extend
  return make_int(static_cast<std::int64_t>(v));
}

// A big-endian IEEE double (checkpoints keep hyperparameters such as dropout as floats).
Value* PickleMachine::binfloat() {
  const std::string raw = bytes(8);
  std::uint64_t bits = 0;
  for (unsigned char c : raw) bits = (bits << 8) | c;
  Value* x = make(Kind::Float);
  std::memcpy(&x->real, &bits, sizeof bits);
  return x;
}

void PickleMachine::add_to(Value* container, const std::vector<Value*>& items) {
  count_items(items.size());
  if (container->kind == Kind::List) {
    container->items.insert(container->items.end(), items.begin(), items.end());
  } else if (container->kind == Kind::Dict) {
    if (items.size() % 2 != 0) throw Error("pickle SETITEMS has an odd number of items");
    container->items.insert(container->items.end(), items.begin(), items.end());
  } else {
    throw Error(fmt::format("pickle adds items to a {}", kind_name(container->kind)));
  }
}

// ('storage', torch.XStorage, key, location, numel): the record data/<key>, loaded once.
Value* PickleMachine::persistent_load(Value* pid) {
  expect(pid, Kind::Tuple, "a persistent id");
  if (pid->items.size() != 5 || pid->items[0]->kind != Kind::String || pid->items[0]->text != "storage")
    throw Error("pickle has a persistent id that is not ('storage', type, key, location, numel)");
  const c10::ScalarType type = storage_dtype(expect(pid->items[1], Kind::Global, "a storage type")->text);
  const std::string& key = expect(pid->items[2], Kind::String, "a storage key")->text;
  const std::int64_t numel = expect(pid->items[4], Kind::Int, "a storage size")->integer;

  auto found = storages_.find(key);
  if (found == storages_.end())
    found = storages_.emplace(key, StorageRecord{archive_.storage(key, type, numel), type}).first;
  StorageRecord& s = found->second;
  if (s.type != type)
    throw Error(fmt::format("storage '{}' is used as both {} and {}", brief_text(key), c10::toString(s.type),
                            c10::toString(type)));
  const std::uint64_t item = c10::elementSize(type);
  if (numel < 0 || s.storage.nbytes() % item != 0 || s.storage.nbytes() / item != static_cast<std::uint64_t>(numel))
    throw Error(fmt::format("storage '{}' has {} bytes, not {} elements of {}", brief_text(key), s.storage.nbytes(),
                            numel, c10::toString(type)));
  Value* v = make(Kind::Storage);
  v->storage = &s;
  return v;
}

Value* PickleMachine::call(Value* callable, Value* args) {
  expect(callable, Kind::Global, "REDUCE");
  expect(args, Kind::Tuple, "REDUCE arguments");
  const std::string& name = callable->text;
  const auto& a = args->items;
  if (name == "collections.OrderedDict" && a.empty()) return make(Kind::Dict);
  if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
  // nn.Parameter: (data, requires_grad, backward_hooks[, state]); the data is what a state dict needs.
  if ((name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") &&
      !a.empty())
    return expect(a[0], Kind::Tensor, "a parameter's data");
  throw Error(fmt::format("pickle calls {} which a state dict does not use", brief_text(name)));
}

// (storage, storage_offset, size, stride, ...): a view of the storage, bounds checked here.
Value* PickleMachine::rebuild_tensor(const std::vector<Value*>& args) {
  if (args.size() < 4) throw Error("pickle rebuilds a tensor with too few arguments");
  StorageRecord& s = *expect(args[0], Kind::Storage, "a tensor's storage")->storage;
  const std::int64_t offset = expect(args[1], Kind::Int, "a tensor's offset")->integer;
  const std::vector<std::int64_t> size = int_tuple(args[2], "a tensor's size");
  const std::vector<std::int64_t> stride = int_tuple(args[3], "a tensor's stride");
  if (size.size() != stride.size()) throw Error("pickle rebuilds a tensor whose size and stride differ in rank");
  if (size.size() > kMaxRank) throw Error(fmt::format("pickle rebuilds a tensor of more than {} dimensions", kMaxRank));

  bool empty = false;
  for (std::size_t i = 0; i < size.size(); ++i) {
    if (size[i] < 0 || stride[i] < 0) throw Error("pickle rebuilds a tensor with a negative size or stride");
    empty = empty || size[i] == 0;
  }
  if (offset < 0) throw Error("pickle rebuilds a tensor with a negative storage offset");
  // Index of the last element, in 128 bits and stopping once past the end so nothing can wrap.
  const auto storage_numel = static_cast<__int128>(s.storage.nbytes() / c10::elementSize(s.type));
  __int128 last = offset;
  for (std::size_t i = 0; i < size.size() && !empty && last < storage_numel; ++i)
    last += static_cast<__int128>(size[i] - 1) * stride[i];
  if (!empty && last >= storage_numel)
    throw Error(fmt::format("pickle rebuilds a tensor that reaches past its storage of {} elements",
                            static_cast<std::int64_t>(storage_numel)));
  // A view inside its storage can still repeat it (stride 0, overlapping strides): a tensor of more
  // elements than its storage holds would blow up to that many when anything copies it (contiguous,
  // a dtype conversion), far beyond the file's size. torch.save of a weight never makes one.
  __int128 numel = 1;
  for (std::size_t i = 0; i < size.size() && numel <= storage_numel; ++i) numel *= size[i];
  if (!empty && numel > storage_numel)
    throw Error(fmt::format("pickle rebuilds a tensor of shape [{}] from a storage of only {} elements "
                            "(stride 0 or overlapping strides repeat its elements)",
                            fmt::join(size, ", "), static_cast<std::int64_t>(storage_numel)));

  Value* v = make(Kind::Tensor);
  v->tensor = at::empty({0}, at::TensorOptions().dtype(s.type));
  v->tensor.set_(s.storage, empty ? 0 : offset, size, stride);
  v->storage = &s;
  return v;
}

// Each entry of the result is a tensor of its own (so that metadata changes to one, e.g. a
// transpose in place, cannot reach another entry that the pickle made from the same object), but
// its data stays where rebuild_tensor put it: a view of the storage, never a copy. A copy would
// also materialise whatever a view claims, e.g. a stride-0 view of billions of elements.
at::Tensor own_view(const at::Tensor& t) {
  return at::empty({0}, t.options()).set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
}

TensorMap to_state_dict(Value* root) {
  if (root->kind != Kind::Dict) throw Error(fmt::format("holds a {}, not a state dict", kind_name(root->kind)));
  TensorMap out;
  for (std::size_t i = 0; i < root->items.size(); i += 2) {
    Value* key = root->items[i];
    Value* value = root->items[i + 1];
    if (key->kind != Kind::String) throw Error(fmt::format("state dict has a {} key", kind_name(key->kind)));
    if (value->kind != Kind::Tensor)
      throw Error(fmt::format("state dict entry '{}' is a {}, not a tensor", brief_text(key->text), kind_name(value->kind)));
    out[key->text] = own_view(value->tensor);
  }
  return out;
}

bool is_tensor_dict(const Value* v) {
  if (v->kind != Kind::Dict) return false;
  for (std::size_t i = 0; i < v->items.size(); i += 2)
    if (v->items[i]->kind != Kind::String || v->items[i + 1]->kind != Kind::Tensor) return false;
  return true;
}

// JSON cannot share a value the way the pickle's memo does: an object referred to twice is written
// twice, so a pickle of n levels that each refer twice to the level below would expand to 2^n
// values. What a conversion would cost (16 per value plus its text) is therefore counted first,
// once per object (memoised by identity, in time linear in the pickle), and refused above the
// budget. Without shared objects the cost stays below the pickle's own size plus 16 per value.
constexpr std::uint64_t kPlainJsonBudget = std::uint64_t(64) << 20;

class PlainCost {
 public:
  // The cost of converting `root` (an upper bound: the conversion stops early at a value that is
  // not plain, or 64 levels down), saturating just above the budget. Walked with a stack of its own
  // (pickles nest millions deep); a value that contains itself costs more than the budget, as its
  // conversion would repeat it down to the depth limit.
  std::uint64_t of(const Value* root) {
    constexpr std::uint64_t kOver = kPlainJsonBudget + 1;
    std::vector<std::pair<const Value*, std::size_t>> path{{root, 0}};  // value, next item to visit
    while (!path.empty()) {
      const Value* v = path.back().first;
      const std::size_t next = path.back().second;
      if (next == 0) {
        const auto known = cost_.find(v);
        if (known != cost_.end() && known->second != kInProgress) {
          path.pop_back();
          continue;
        }
        cost_[v] = kInProgress;
      }
      if (next < v->items.size()) {
        ++path.back().second;
        const Value* item = v->items[next];
        const auto known = cost_.find(item);
        if (known == cost_.end()) path.push_back({item, 0});
        else if (known->second == kInProgress) cost_[v] = kOver, path.clear();  // a cycle: stop here
        continue;
      }
      std::uint64_t c = 16 + v->text.size();
      for (const Value* item : v->items) c = std::min(c + cost_.at(item), kOver);
      cost_[v] = c;
      path.pop_back();
    }
    const std::uint64_t c = cost_.at(root);
    return c == kInProgress ? kOver : c;
  }

 private:
  static constexpr std::uint64_t kInProgress = ~std::uint64_t(0);
  std::unordered_map<const Value*, std::uint64_t> cost_;
};

// Plain data as JSON; false (and `out` unspecified) when `v` holds anything else (tensors, objects,
// non-string dict keys). `depth` bounds the recursion on hostile nesting.
bool to_plain_json(const Value* v, nlohmann::json& out, int depth = 0) {
  if (depth > 64) return false;
  switch (v->kind) {
    case Kind::None: out = nullptr; return true;
    case Kind::Bool: out = v->integer != 0; return true;
    case Kind::Int: out = v->integer; return true;
    case Kind::Float: out = v->real; return true;
    case Kind::String: out = v->text; return true;
    case Kind::Tuple:
    case Kind::List:
      out = nlohmann::json::array();
      for (const Value* item : v->items) {
        nlohmann::json j;
        if (!to_plain_json(item, j, depth + 1)) return false;
        out.push_back(std::move(j));
      }
      return true;
    case Kind::Dict:
      out = nlohmann::json::object();
      for (std::size_t i = 0; i < v->items.size(); i += 2) {
        nlohmann::json j;
        if (v->items[i]->kind != Kind::String || !to_plain_json(v->items[i + 1], j, depth + 1)) return false;
        out[v->items[i]->text] = std::move(j);
      }
      return true;
    default: return false;
  }
}

// The checkpoint keys that may hold the state dict, in the order they are tried.
const char* const kStateDictKeys[] = {"model", "state_dict", "model_state_dict"};

// The value stored under string key `key` in dict `d`, or null.
Value* dict_get(const Value* d, const std::string& key) {
  for (std::size_t i = 0; i < d->items.size(); i += 2)
    if (d->items[i]->kind == Kind::String && d->items[i]->text == key) return d->items[i + 1];
  return nullptr;
}

// A dict of tensors is the state dict itself; otherwise it is looked for under kStateDictKeys.
TensorMap checkpoint_state_dict(Value* root, std::string* found_under, nlohmann::json* plain) {
  if (root->kind != Kind::Dict) throw Error(fmt::format("holds a {}, not a state dict", kind_name(root->kind)));
  std::vector<std::string> keys;
  if (plain) {
    *plain = nlohmann::json::object();
    PlainCost cost;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < root->items.size(); i += 2)
      if (root->items[i]->kind == Kind::String) total = std::min(total + cost.of(root->items[i + 1]), kPlainJsonBudget + 1);
    if (total > kPlainJsonBudget)
      throw Error(fmt::format("the checkpoint's plain values expand to more than {} MiB of JSON (objects the pickle "
                              "shares, repeated)",
                              kPlainJsonBudget >> 20));
  }
  for (std::size_t i = 0; i < root->items.size(); i += 2) {
    const Value* k = root->items[i];
    if (k->kind != Kind::String) continue;
    keys.push_back(brief_text(k->text));
    nlohmann::json j;
    if (plain && to_plain_json(root->items[i + 1], j)) (*plain)[k->text] = std::move(j);
  }
  if (found_under) found_under->clear();
  if (is_tensor_dict(root)) return to_state_dict(root);
  for (const char* key : kStateDictKeys) {
    Value* state = dict_get(root, key);
    if (!state || !is_tensor_dict(state)) continue;
    if (found_under) *found_under = key;
    return to_state_dict(state);
  }
  if (keys.size() > 12) keys.resize(12), keys.push_back("...");
  throw Error(fmt::format("holds a dict that is neither a state dict nor a checkpoint with a dict of tensors under "
                          "'model', 'state_dict' or 'model_state_dict' (its keys: {})",
                          fmt::join(keys, ", ")));
}

// torch's messages may continue with context lines.
TorchArchive::TorchArchive(const std::filesystem::path& file, std::shared_ptr<const MappedFile> mapped)
    : file_(file), mapped_(std::move(mapped)) {
  const unsigned char* bytes = mapped_->data();
  // Legacy torch.save files are a bare pickle stream (starting with PROTO), not a zip.
  if (mapped_->size() >= 1 && bytes[0] == 0x80)
    throw Error("legacy torch.save format is not supported; re-save with torch>=1.6");
  if (mapped_->size() < 4 || std::memcmp(bytes, "PK\x03\x04", 4) != 0) throw Error("not a torch.save zip archive");
  std::vector<ZipRecord> records;
  try {
    records = read_zip_directory(bytes, mapped_->size());
  } catch (const Error& e) {
    throw Error(fmt::format("cannot read the archive: {}", e.what()));
  }
  // As in PyTorchStreamReader: names are looked up inside the first record's top directory.
  const std::string first = records.empty() ? std::string() : records.front().name;
  const std::size_t slash = first.find('/');
  if (slash == std::string::npos)
    throw Error(fmt::format("cannot read the archive: its first record '{}' is not inside a top directory",
                            brief_text(first)));
  const std::string top = first.substr(0, slash + 1);
  for (ZipRecord& r : records)
    if (r.name.compare(0, top.size(), top) == 0) records_.emplace(r.name.substr(top.size()), std::move(r));
}

const ZipRecord& TorchArchive::record(const std::string& name) const {
  const auto it = records_.find(name);
  if (it == records_.end()) throw Error(fmt::format("archive has no record '{}'", brief_text(name)));
  return it->second;
}

// A compressed record, inflated into memory by PyTorchStreamReader (miniz, which checks its CRC).
at::DataPtr TorchArchive::extract(const std::string& name, const ZipRecord& r) {
  if (r.method != 8)
    throw Error(fmt::format("record '{}' uses compression method {}; only stored (0) and deflated (8) records are read",
                            brief_text(name), r.method));
  // Deflate expands at most 1032:1: a record that claims more is damaged, or a decompression bomb.
  if (r.size / 1032 > r.stored_size + 1)
    throw Error(fmt::format("record '{}' claims {} bytes from {} deflated bytes, more than deflate can produce",
                            brief_text(name), r.size, r.stored_size));
  if (!extractor_) extractor_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(file_.string());
  auto [data, size] = extractor_->getRecord(name);
  if (size != r.size)
    throw Error(fmt::format("record '{}' extracts to {} bytes, but its header says {}", brief_text(name), size, r.size));
  return std::move(data);
}

std::string_view TorchArchive::small_record(const std::string& name) {
  const ZipRecord& r = record(name);
  if (r.method != 0) {
    extracted_.push_back(extract(name, r));
    return {static_cast<const char*>(extracted_.back().get()), static_cast<std::size_t>(r.size)};
  }
  // Storages are not checked (that would read every byte of the weights); the pickle is small.
  const unsigned char* data = mapped_->data() + r.data_offset;
  if (zip_crc32(data, r.size) != r.crc32)
    throw Error(fmt::format("record '{}' fails its CRC check: the file is damaged", brief_text(name)));
  return {reinterpret_cast<const char*>(data), static_cast<std::size_t>(r.size)};
}

c10::Storage TorchArchive::storage(const std::string& key, c10::ScalarType type, std::int64_t numel) {
  const std::string name = "data/" + key;
  const ZipRecord& r = record(name);
  const std::uint64_t item = c10::elementSize(type);
  if (numel < 0 || r.size % item != 0 || r.size / item != static_cast<std::uint64_t>(numel))
    throw Error(fmt::format("storage '{}' has {} bytes, not {} elements of {}", brief_text(key), r.size, numel,
                            c10::toString(type)));
  if (r.method == 0) return mapped_->tensor(r.data_offset, type, {numel}).storage();
  return c10::Storage(c10::Storage::use_byte_size_t(), r.size, extract(name, r), c10::GetCPUAllocator(),
                      /*resizable=*/false);
}

// Runs data.pkl of the archive and hands its top-level value to `convert`; every error names the file.
template <typename Convert>
TensorMap read_archive(const std::filesystem::path& file, Convert convert) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    throw Error(fmt::format("{}: cannot open: not an existing regular file", file.string()));
  std::shared_ptr<const MappedFile> mapped = MappedFile::open(file);  // its errors name the file
  try {
    TorchArchive archive(file, std::move(mapped));
    if (archive.has("byteorder") && archive.small_record("byteorder") != "little")
      throw Error("big-endian archives are not supported");
    if (!archive.has("data.pkl")) throw Error("archive has no data.pkl record");
    PickleMachine machine(archive.small_record("data.pkl"), archive);
    return convert(machine.run());
  } catch (const Error& e) {
    throw Error(one_line(fmt::format("{}: {}", file.string(), e.what())));
  } catch (const c10::Error& e) {
    throw Error(one_line(fmt::format("{}: cannot read the archive: {}", file.string(), first_line(e.what_without_backtrace()))));
  } catch (const std::exception& e) {
    throw Error(one_line(fmt::format("{}: cannot read the archive: {}", file.string(), first_line(e.what()))));
  }
}

}  // namespace

TensorMap read_pytorch_bin(const std::filesystem::path& file) { return read_archive(file, to_state_dict); }

TensorMap read_pytorch_checkpoint(const std::filesystem::path& file, std::string* found_under, nlohmann::json* plain) {
  return read_archive(file, [&](Value* root) { return checkpoint_state_dict(root, found_under, plain); });
}

}  // namespace hooklens
