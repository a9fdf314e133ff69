// Simulation harness: a Verilated Tessera device driven by a host process over stdin/stdout.
//
// The device's only interfaces are two 32-bit streams (host_in, host_out) plus clk and a synchronous,
// active-high rst. Python must not tick clock edges itself (~30k cycles/s under cocotb); instead it sends
// requests here and this loop runs the clock in C++ (hundreds of thousands of cycles/s or more) until the
// request is done. sw_driver/transport.py builds this file and is its only client.
//
// Wire protocol (every field a little-endian uint32 "word"; the numeric values of OP_*, STATUS_*,
// PROTOCOL_MAGIC and PROTOCOL_VERSION live in transport.py, which writes them into sim_protocol.h):
//
//   on start   harness -> host: PROTOCOL_MAGIC, PROTOCOL_VERSION
//   request    host -> harness: opcode, arguments...
//   response   harness -> host: status, n, then n data words          (one per request but OP_SEND)
//
//   OP_RESET    cycles                 rst high for `cycles` cycles; both word queues are emptied
//   OP_SEND     count, word*count      queue words for host_in; no clock runs. No response: the usual
//                                      send-then-receive then costs one pipe round trip instead of two
//   OP_RECV     count, max_idle        clock until `count` words have come out of host_out; respond with
//                                      them. STATUS_TIMEOUT (and the words so far) if no word moved in
//                                      either direction for `max_idle` (at least 1) consecutive cycles
//   OP_RUN      cycles                 just clock; words still move both ways
//   OP_STATS                           data: cycles (lo, hi), words_in (lo, hi), words_out (lo, hi),
//                                      words queued for host_in, words collected but not yet returned
//   OP_THROTTLE in_stall, out_stall, seed
//                                      per-cycle probability, in 1/65536, that the host holds back
//                                      host_in.valid (before a word is offered) / drops host_out.ready
//   OP_QUIT                            respond, then exit
//
// Outside reset the harness always clocks both streams: it offers queued words on host_in and collects
// every word from host_out (a host with a receive buffer), so RUN and RECV both drain the device.
// An unknown opcode gets STATUS_BAD_REQUEST and ends the process: the byte stream can no longer be framed.
//
// Build variant: with Verilator's --trace, `--trace file.vcd` writes a waveform of everything run.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <unistd.h>

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

#include "sim_protocol.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is the host's native word order");

// Amaranth flattens interface ports with "__"; Verilator escapes "__" in C++ member names as "___05F".
#define HOST_IN_VALID host_in___05Fvalid
#define HOST_IN_READY host_in___05Fready
#define HOST_IN_PAYLOAD host_in___05Fpayload
#define HOST_OUT_VALID host_out___05Fvalid
#define HOST_OUT_READY host_out___05Fready
#define HOST_OUT_PAYLOAD host_out___05Fpayload

namespace {

// A FIFO of words that is appended to in bulk (fread straight into it) and consumed one word per cycle.
class WordQueue {
  public:
    size_t size() const { return words_.size() - head_; }
    bool empty() const { return size() == 0; }
    uint32_t front() const { return words_[head_]; }
    const uint32_t* data() const { return words_.data() + head_; }
    void push(uint32_t word) { words_.push_back(word); }
    uint32_t* grow(size_t count) {
        words_.resize(words_.size() + count);
        return words_.data() + words_.size() - count;
    }
    void pop(size_t count = 1) {
        head_ += count;
        // Reclaim the consumed prefix only once it dominates, so popping stays O(1) amortised.
        if (head_ > 4096 && head_ * 2 > words_.size()) {
            words_.erase(words_.begin(), words_.begin() + head_);
            head_ = 0;
        }
    }
    void clear() {
        words_.clear();
        head_ = 0;
    }

  private:
    std::vector<uint32_t> words_;
    size_t head_ = 0;
};

class Harness {
  public:
    Harness(const char* trace_path) : context_(new VerilatedContext) {
#if VM_TRACE
        if (trace_path) context_->traceEverOn(true);  // must precede the model's construction
#endif
        top_.reset(new Vtop(context_.get()));
#if VM_TRACE
        if (trace_path) {
            trace_.reset(new VerilatedVcdC);
            top_->trace(trace_.get(), 99);
            trace_->open(trace_path);
        }
#else
        if (trace_path) {
            std::fprintf(stderr, "sim_harness: --trace needs a build with Verilator's --trace\n");
            std::exit(2);
        }
#endif
        top_->clk = 0;
        top_->eval();
    }

    ~Harness() {
        top_->final();
#if VM_TRACE
        if (trace_) trace_->close();
#endif
    }

    void reset(uint32_t cycles) {
        in_queue_.clear();
        out_queue_.clear();
        presenting_ = false;
        for (uint32_t i = 0; i < cycles; ++i) tick(true);
    }

    // Clocks until `want_out` words are collected or `max_cycles` have run. With a nonzero `max_idle`, also
    // stops (returning false) after that many consecutive cycles in which no word moved either way.
    bool run(uint64_t max_cycles, size_t want_out, uint32_t max_idle) {
        uint32_t idle = 0;
        for (uint64_t i = 0; i < max_cycles && out_queue_.size() < want_out; ++i) {
            if (tick(false)) {
                idle = 0;
            } else if (max_idle && ++idle >= max_idle) {
                return false;
            }
        }
        return true;
    }

    void throttle(uint32_t in_stall, uint32_t out_stall, uint32_t seed) {
        in_stall_ = in_stall;
        out_stall_ = out_stall;
        rng_state_ = seed ? seed : 1;  // xorshift has a fixed point at zero
    }

    WordQueue& in_queue() { return in_queue_; }
    WordQueue& out_queue() { return out_queue_; }
    uint64_t cycles = 0, words_in = 0, words_out = 0;

  private:
    // One clock cycle; returns whether a word was accepted on host_in or produced on host_out.
    bool tick(bool in_reset) {
        // New inputs go in with the falling edge, half a period before the rising edge that samples them,
        // as a registered host would drive them: the design's posedge flops never race the host. The design
        // has no negedge logic, so the falling edge and the input change can share one eval().
        if (!presenting_ && !in_reset && !in_queue_.empty()) presenting_ = !stalls(in_stall_);
        // Once offered, a word stays offered until taken: a stream's valid may not fall before ready.
        top_->HOST_IN_VALID = presenting_;
        top_->HOST_IN_PAYLOAD = presenting_ ? in_queue_.front() : 0;
        const bool host_ready = !in_reset && !stalls(out_stall_);
        top_->HOST_OUT_READY = host_ready;
        top_->rst = in_reset;
        top_->clk = 0;
        top_->eval();
        dump();
        // The handshakes are decided by what has settled before the edge; the edge itself changes them.
        const bool took_in = presenting_ && top_->HOST_IN_READY;
        const bool gave_out = host_ready && top_->HOST_OUT_VALID;
        const uint32_t out_word = top_->HOST_OUT_PAYLOAD;
        top_->clk = 1;
        top_->eval();
        dump();
        ++cycles;
        if (took_in) {
            in_queue_.pop();
            presenting_ = false;
            ++words_in;
        }
        if (gave_out) {
            out_queue_.push(out_word);
            ++words_out;
        }
        return took_in || gave_out;
    }

    bool stalls(uint32_t probability) {
        if (probability == 0) return false;
        rng_state_ ^= rng_state_ << 13;
        rng_state_ ^= rng_state_ >> 17;
        rng_state_ ^= rng_state_ << 5;
        return (rng_state_ & 0xFFFF) < probability;
    }

    void dump() {
#if VM_TRACE
        if (trace_) trace_->dump(context_->time());
#endif
        context_->timeInc(1);
    }

    std::unique_ptr<VerilatedContext> context_;
    std::unique_ptr<Vtop> top_;
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> trace_;
#endif
    WordQueue in_queue_, out_queue_;
    bool presenting_ = false;
    uint32_t in_stall_ = 0, out_stall_ = 0, rng_state_ = 1;
};

// The protocol channel. It is a private copy of the original stdout: fd 1 itself is pointed at stderr so
// that anything the design prints ($display) cannot corrupt the word stream.
FILE* reply_stream = nullptr;

// Reads exactly `count` words; a short read means the host has gone away, and there is nobody left to answer.
bool read_words(uint32_t* dst, size_t count) {
    return std::fread(dst, sizeof(uint32_t), count, stdin) == count;
}

void reply(uint32_t status, const uint32_t* data, size_t count) {
    const uint32_t header[2] = {status, static_cast<uint32_t>(count)};
    std::fwrite(header, sizeof header, 1, reply_stream);
    if (count) std::fwrite(data, sizeof(uint32_t), count, reply_stream);
    std::fflush(reply_stream);
}

void reply(uint32_t status) { reply(status, nullptr, 0); }

}  // namespace

int main(int argc, char** argv) {
    const char* trace_path = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--trace") && i + 1 < argc) {
            trace_path = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--trace file.vcd]\n", argv[0]);
            return 2;
        }
    }
    reply_stream = fdopen(dup(STDOUT_FILENO), "wb");
    dup2(STDERR_FILENO, STDOUT_FILENO);
    // Bulk transfers are megabytes; large stdio buffers keep them to a few system calls.
    std::setvbuf(stdin, nullptr, _IOFBF, 1 << 20);
    std::setvbuf(reply_stream, nullptr, _IOFBF, 1 << 20);

    Harness harness(trace_path);
    const uint32_t hello[2] = {proto::PROTOCOL_MAGIC, proto::PROTOCOL_VERSION};
    std::fwrite(hello, sizeof hello, 1, reply_stream);
    std::fflush(reply_stream);

    uint32_t opcode;
    uint32_t args[3];
    while (read_words(&opcode, 1)) {
        switch (opcode) {
        case proto::OP_RESET:
            if (!read_words(args, 1)) return 0;
            harness.reset(args[0]);
            reply(proto::STATUS_OK);
            break;
        case proto::OP_SEND:
            if (!read_words(args, 1) || !read_words(harness.in_queue().grow(args[0]), args[0])) return 0;
            break;
        case proto::OP_RECV: {
            if (!read_words(args, 2)) return 0;
            const size_t want = args[0];
            const bool done = harness.run(UINT64_MAX, want, args[1] ? args[1] : 1);
            WordQueue& out = harness.out_queue();
            const size_t count = out.size() < want ? out.size() : want;
            reply(done ? proto::STATUS_OK : proto::STATUS_TIMEOUT, out.data(), count);
            out.pop(count);
            break;
        }
        case proto::OP_RUN:
            if (!read_words(args, 1)) return 0;
            harness.run(args[0], SIZE_MAX, 0);
            reply(proto::STATUS_OK);
            break;
        case proto::OP_STATS: {
            const uint32_t stats[8] = {
                static_cast<uint32_t>(harness.cycles), static_cast<uint32_t>(harness.cycles >> 32),
                static_cast<uint32_t>(harness.words_in), static_cast<uint32_t>(harness.words_in >> 32),
                static_cast<uint32_t>(harness.words_out), static_cast<uint32_t>(harness.words_out >> 32),
                static_cast<uint32_t>(harness.in_queue().size()), static_cast<uint32_t>(harness.out_queue().size()),
            };
            reply(proto::STATUS_OK, stats, 8);
            break;
        }
        case proto::OP_THROTTLE:
            if (!read_words(args, 3)) return 0;
            harness.throttle(args[0], args[1], args[2]);
            reply(proto::STATUS_OK);
            break;
        case proto::OP_QUIT:
            reply(proto::STATUS_OK);
            return 0;
        default:
            std::fprintf(stderr, "sim_harness: unknown opcode %u; the request stream is out of step\n", opcode);
            reply(proto::STATUS_BAD_REQUEST);
            return 3;
        }
    }
    return 0;  // the host closed stdin without OP_QUIT
}
