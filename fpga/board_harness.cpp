// Simulated board: the FPGA top (UART link + accelerator) under Verilator, with a bit-level UART on the host
// side and fault injection on the bytes of both directions. fpga/sim_board.py builds this file and is its only
// client; it speaks the framed link protocol through it exactly as it would through a serial port.
//
// Build variant: with Verilator's --trace, `DIVISOR --trace file.vcd` writes a waveform of everything run.
//
// Python never ticks a clock edge: it writes bytes, then asks this loop to run the clock until the device has
// sent a burst of bytes and gone quiet, or until a time-out.
//
// Pipe protocol (every field a little-endian uint32 word; the numbers live in fpga/sim_board.py, which writes
// them into board_protocol.h):
//   on start   harness -> host: MAGIC, VERSION
//   request    host -> harness: opcode, arguments...
//   response   harness -> host: status, n, then n data words          (one per request but OP_WRITE)
//
//   OP_RESET     cycles                   rst high for `cycles` cycles; both byte queues emptied
//   OP_WRITE     count, ceil(count/4) words of bytes
//                                         queue bytes for the host's UART transmitter; no response
//   OP_EXCHANGE  max_cycles, quiet_cycles, max_bytes
//                                         clock until the device has sent something and then nothing for
//                                         `quiet_cycles`, or `max_bytes` arrived, or `max_cycles` passed with
//                                         nothing at all; data: count, cycles lo, hi, then the bytes 4 to a word
//   OP_FAULTS    direction, flip, drop, duplicate, seed
//                                         per-byte probabilities (1/2^24) of a fault on the bytes going to
//                                         (direction 0) or coming from (direction 1) the device
//   OP_STATS                              data: cycles lo, hi, bytes to device, bytes from device, framing
//                                         errors, then flips, drops, duplicates to the device, then from it,
//                                         then the device's own counters: frames it dropped, resends
//   OP_QUIT                               respond, then exit

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include <unistd.h>

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

#include "board_protocol.h"

namespace {

struct Faults {
    uint32_t flip = 0, drop = 0, duplicate = 0;  // probability per byte, in 1/2^24
    uint64_t flips = 0, drops = 0, duplicates = 0;
};

class Random {
  public:
    void seed(uint32_t s) { state_ = s ? s : 1; }
    uint32_t next() {  // xorshift32
        state_ ^= state_ << 13;
        state_ ^= state_ >> 17;
        state_ ^= state_ << 5;
        return state_;
    }
    bool chance(uint32_t p24) { return p24 && (next() & 0xFFFFFF) < p24; }

  private:
    uint32_t state_ = 1;
};

class Board {
  public:
    Board(uint32_t divisor, const char* trace_path) : divisor_(divisor) {
#if VM_TRACE
        if (trace_path) Verilated::traceEverOn(true);
#endif
        top_.reset(new Vtop);
#if VM_TRACE
        if (trace_path) {
            trace_.reset(new VerilatedVcdC);
            top_->trace(trace_.get(), 99);
            trace_->open(trace_path);
        }
#else
        (void)trace_path;
#endif
        top_->clk = 0;
        top_->uart_rx = 1;
        top_->eval();
    }
    ~Board() {
        top_->final();
#if VM_TRACE
        if (trace_) trace_->close();
#endif
    }

    void reset(uint32_t cycles) {
        to_device_.clear();
        from_device_.clear();
        tx_bits_left_ = 0;
        rx_state_ = RX_IDLE;
        for (uint32_t i = 0; i < cycles; ++i) tick(true);
    }

    void write(const uint8_t* data, size_t count) { to_device_.insert(to_device_.end(), data, data + count); }

    // Runs until a burst from the device has ended (quiet for quiet_cycles), or max_bytes came, or max_cycles
    // passed without a byte.
    void exchange(uint64_t max_cycles, uint32_t quiet_cycles, size_t max_bytes) {
        uint64_t waited = 0;
        uint32_t quiet = 0;
        while (from_device_.size() < max_bytes) {
            const bool got = tick(false);
            if (from_device_.empty()) {
                if (++waited >= max_cycles) return;
            } else if (got || rx_state_ != RX_IDLE) {
                quiet = 0;
            } else if (++quiet >= quiet_cycles) {
                return;
            }
        }
    }

    std::vector<uint8_t>& received() { return from_device_; }
    uint32_t device_bad_frames() const { return top_->link_bad_frames; }
    uint32_t device_resends() const { return top_->link_resent_frames; }
    Faults faults[2];
    Random random;
    uint64_t cycles = 0, bytes_to_device = 0, bytes_from_device = 0, framing_errors = 0;

  private:
    enum RxState { RX_IDLE, RX_START, RX_BITS };

    // One clock cycle; returns whether a byte from the device was completed.
    bool tick(bool in_reset) {
        drive_line();
        top_->rst = in_reset;
        top_->clk = 0;
        top_->eval();
        dump();
        const bool line = top_->uart_tx;
        top_->clk = 1;
        top_->eval();
        dump();
        ++cycles;
        return in_reset ? false : sample_line(line);
    }

    // The host's transmitter: start bit, 8 data bits LSB first, stop bit, each `divisor_` cycles long.
    void drive_line() {
        if (tx_bits_left_ == 0) {
            if (to_device_.empty()) {
                top_->uart_rx = 1;
                return;
            }
            uint8_t byte = to_device_.front();
            to_device_.pop_front();
            Faults& f = faults[0];
            if (random.chance(f.drop)) {
                ++f.drops;
                return;
            }
            if (random.chance(f.duplicate)) {
                ++f.duplicates;
                to_device_.push_front(byte);
            }
            if (random.chance(f.flip)) {
                ++f.flips;
                byte ^= 1u << (random.next() % 8);
            }
            tx_shift_ = (1u << 9) | (uint32_t(byte) << 1);
            tx_bits_left_ = 10;
            tx_timer_ = divisor_;
            ++bytes_to_device;
        }
        top_->uart_rx = tx_shift_ & 1;
        if (--tx_timer_ == 0) {
            tx_shift_ >>= 1;
            --tx_bits_left_;
            tx_timer_ = divisor_;
        }
    }

    // The host's receiver: samples the device's line in the middle of each bit.
    bool sample_line(bool line) {
        switch (rx_state_) {
        case RX_IDLE:
            if (!line) {
                rx_state_ = RX_START;
                rx_timer_ = divisor_ / 2;
            }
            return false;
        case RX_START:
            if (--rx_timer_) return false;
            if (line) {
                rx_state_ = RX_IDLE;
                return false;
            }
            rx_state_ = RX_BITS;
            rx_timer_ = divisor_;
            rx_bit_ = 0;
            rx_byte_ = 0;
            return false;
        case RX_BITS:
            if (--rx_timer_) return false;
            rx_timer_ = divisor_;
            if (rx_bit_ < 8) {
                rx_byte_ |= uint32_t(line) << rx_bit_++;
                return false;
            }
            rx_state_ = RX_IDLE;
            if (!line) {
                ++framing_errors;
                return false;
            }
            deliver(uint8_t(rx_byte_));
            return true;
        }
        return false;
    }

    void deliver(uint8_t byte) {
        ++bytes_from_device;
        Faults& f = faults[1];
        if (random.chance(f.drop)) {
            ++f.drops;
            return;
        }
        if (random.chance(f.flip)) {
            ++f.flips;
            byte ^= 1u << (random.next() % 8);
        }
        from_device_.push_back(byte);
        if (random.chance(f.duplicate)) {
            ++f.duplicates;
            from_device_.push_back(byte);
        }
    }

    void dump() {
#if VM_TRACE
        if (trace_) trace_->dump(2 * cycles + top_->clk);
#endif
    }

    const uint32_t divisor_;
    std::unique_ptr<Vtop> top_;
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> trace_;
#endif
    std::deque<uint8_t> to_device_;
    std::vector<uint8_t> from_device_;
    uint32_t tx_shift_ = 0, tx_bits_left_ = 0, tx_timer_ = 0;
    RxState rx_state_ = RX_IDLE;
    uint32_t rx_timer_ = 0, rx_bit_ = 0, rx_byte_ = 0;
};

FILE* reply_stream = nullptr;

bool read_words(uint32_t* dst, size_t count) { return std::fread(dst, sizeof(uint32_t), count, stdin) == count; }

void reply(uint32_t status, const uint32_t* data, size_t count) {
    const uint32_t header[2] = {status, static_cast<uint32_t>(count)};
    std::fwrite(header, sizeof header, 1, reply_stream);
    if (count) std::fwrite(data, sizeof(uint32_t), count, reply_stream);
    std::fflush(reply_stream);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2 && !(argc == 4 && !std::strcmp(argv[2], "--trace"))) {
        std::fprintf(stderr, "usage: %s DIVISOR [--trace file.vcd]\n", argv[0]);
        return 2;
    }
    const char* trace_path = argc == 4 ? argv[3] : nullptr;
    const uint32_t divisor = static_cast<uint32_t>(std::strtoul(argv[1], nullptr, 10));
    if (divisor < 4) {
        std::fprintf(stderr, "board_harness: divisor must be at least 4\n");
        return 2;
    }
    // The protocol goes to a private copy of stdout; fd 1 points at stderr so $display cannot corrupt it.
    reply_stream = fdopen(dup(STDOUT_FILENO), "wb");
    dup2(STDERR_FILENO, STDOUT_FILENO);
    std::setvbuf(stdin, nullptr, _IOFBF, 1 << 20);
    std::setvbuf(reply_stream, nullptr, _IOFBF, 1 << 20);

    Board board(divisor, trace_path);
    const uint32_t hello[2] = {proto::MAGIC, proto::VERSION};
    std::fwrite(hello, sizeof hello, 1, reply_stream);
    std::fflush(reply_stream);

    uint32_t opcode;
    uint32_t args[5];
    std::vector<uint32_t> buffer;
    while (read_words(&opcode, 1)) {
        switch (opcode) {
        case proto::OP_RESET:
            if (!read_words(args, 1)) return 0;
            board.reset(args[0]);
            reply(proto::STATUS_OK, nullptr, 0);
            break;
        case proto::OP_WRITE: {
            if (!read_words(args, 1)) return 0;
            buffer.resize((args[0] + 3) / 4);
            if (!read_words(buffer.data(), buffer.size())) return 0;
            board.write(reinterpret_cast<const uint8_t*>(buffer.data()), args[0]);
            break;
        }
        case proto::OP_EXCHANGE: {
            if (!read_words(args, 3)) return 0;
            board.exchange(args[0], args[1] ? args[1] : 1, args[2] ? args[2] : 1);
            std::vector<uint8_t>& got = board.received();
            buffer.assign(3 + (got.size() + 3) / 4, 0);
            buffer[0] = static_cast<uint32_t>(got.size());
            buffer[1] = static_cast<uint32_t>(board.cycles);
            buffer[2] = static_cast<uint32_t>(board.cycles >> 32);
            if (!got.empty()) std::memcpy(buffer.data() + 3, got.data(), got.size());
            got.clear();
            reply(proto::STATUS_OK, buffer.data(), buffer.size());
            break;
        }
        case proto::OP_FAULTS: {
            if (!read_words(args, 5)) return 0;
            if (args[0] > 1) {
                reply(proto::STATUS_BAD_REQUEST, nullptr, 0);
                return 3;
            }
            Faults& f = board.faults[args[0]];
            f.flip = args[1];
            f.drop = args[2];
            f.duplicate = args[3];
            board.random.seed(args[4]);
            reply(proto::STATUS_OK, nullptr, 0);
            break;
        }
        case proto::OP_STATS: {
            const Faults& in = board.faults[0];
            const Faults& out = board.faults[1];
            const uint32_t stats[13] = {
                static_cast<uint32_t>(board.cycles), static_cast<uint32_t>(board.cycles >> 32),
                static_cast<uint32_t>(board.bytes_to_device), static_cast<uint32_t>(board.bytes_from_device),
                static_cast<uint32_t>(board.framing_errors),
                static_cast<uint32_t>(in.flips), static_cast<uint32_t>(in.drops),
                static_cast<uint32_t>(in.duplicates), static_cast<uint32_t>(out.flips),
                static_cast<uint32_t>(out.drops), static_cast<uint32_t>(out.duplicates),
                board.device_bad_frames(), board.device_resends(),
            };
            reply(proto::STATUS_OK, stats, 13);
            break;
        }
        case proto::OP_QUIT:
            reply(proto::STATUS_OK, nullptr, 0);
            return 0;
        default:
            std::fprintf(stderr, "board_harness: unknown opcode %u; the request stream is out of step\n", opcode);
            reply(proto::STATUS_BAD_REQUEST, nullptr, 0);
            return 3;
        }
    }
    return 0;
}
