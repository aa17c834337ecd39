// A software SoapySDR device for Heimdall's tests: driver "heimdalltest".
//
// It streams a deterministic complex tone through the real SoapySDR API, so the adapter in
// receivers/soapy.py is exercised end to end with the real Debian Python binding. Sample k of
// channel c (k counted from activateStream, including samples it "loses") is
//     amplitude * exp(j * 2*pi * tone_hz * (c + 1) * k / rate)
// CF32 is delivered with full scale 1.0; CS16 as counts with the native full scale of 2048
// (a 12-bit converter, so an adapter that assumes 32768 is caught).
//
// Device arguments (all optional, all echoed back by find so SoapySDR's device cache keys on them):
//   tone_hz=25000       tone frequency on channel 0 (channel c gets (c + 1) * tone_hz)
//   amplitude=0.5       tone amplitude relative to full scale
//   paced=1             1: deliver samples no faster than the sample rate; 0: as fast as asked
//   has_time=0          1: set SOAPY_SDR_HAS_TIME and timeNs = time base + k / rate
//   time_ns0=<now>      device time of sample 0 (default: host Unix time at activateStream)
//   mtu=4096            getStreamMTU (also settable per stream with the stream arg mtu=N)
//   overflow_every=0    every Nth readStream call returns SOAPY_SDR_OVERFLOW and skips samples
//   overflow_skip=10000 samples skipped per overflow (they still advance k and the time)
//   timeout_every=0     every Nth readStream call returns SOAPY_SDR_TIMEOUT (1 = always)
//   disappear_after=0   after this many delivered samples the device is gone for good:
//   disappear_mode=error  readStream returns SOAPY_SDR_STREAM_ERROR ("error") or throws ("throw")
//
// readSetting("live_devices") returns how many devices of this driver exist in the process, so a
// test can check that an adapter released its device.

#include <SoapySDR/Device.hpp>
#include <SoapySDR/Formats.hpp>
#include <SoapySDR/Registry.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <complex>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

std::atomic<int> g_live{0};
constexpr double kCs16FullScale = 2048.0;
constexpr size_t kChannels = 2;

double argDouble(const SoapySDR::Kwargs &args, const std::string &key, double dflt)
{
    auto it = args.find(key);
    return it == args.end() ? dflt : std::stod(it->second);
}

long long argInt(const SoapySDR::Kwargs &args, const std::string &key, long long dflt)
{
    auto it = args.find(key);
    return it == args.end() ? dflt : std::stoll(it->second);
}

long long hostNowNs()
{
    using namespace std::chrono;
    return duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count();
}

struct TestStream
{
    std::string format;
    size_t channel;
    size_t mtu;
};

class HeimdallTestDevice : public SoapySDR::Device
{
public:
    explicit HeimdallTestDevice(const SoapySDR::Kwargs &args)
        : _args(args),
          _tone_hz(argDouble(args, "tone_hz", 25000.0)),
          _amplitude(argDouble(args, "amplitude", 0.5)),
          _paced(argInt(args, "paced", 1) != 0),
          _has_time(argInt(args, "has_time", 0) != 0),
          _mtu(size_t(argInt(args, "mtu", 4096))),
          _overflow_every(argInt(args, "overflow_every", 0)),
          _overflow_skip(argInt(args, "overflow_skip", 10000)),
          _timeout_every(argInt(args, "timeout_every", 0)),
          _disappear_after(argInt(args, "disappear_after", 0)),
          _disappear_throw(args.count("disappear_mode") && args.at("disappear_mode") == "throw")
    {
        _time_ns0_fixed = args.count("time_ns0") != 0;
        _time_ns0 = argInt(args, "time_ns0", 0);
        ++g_live;
    }

    ~HeimdallTestDevice() override { --g_live; }

    std::string getDriverKey() const override { return "heimdalltest"; }
    std::string getHardwareKey() const override { return "heimdalltest-sw"; }
    size_t getNumChannels(const int dir) const override { return dir == SOAPY_SDR_RX ? kChannels : 0; }

    std::string readSetting(const std::string &key) const override
    {
        if (key == "live_devices") return std::to_string(g_live.load());
        if (key == "sample_counter") return std::to_string(_counter);
        return "";
    }

    // --- RF settings: stored and read back -------------------------------------------------
    std::vector<std::string> listAntennas(const int, const size_t) const override { return {"RX", "LOOP"}; }
    void setAntenna(const int, const size_t, const std::string &name) override
    {
        if (name != "RX" && name != "LOOP") throw std::invalid_argument("no antenna " + name);
        _antenna = name;
    }
    std::string getAntenna(const int, const size_t) const override { return _antenna; }

    std::vector<std::string> listGains(const int, const size_t) const override { return {"TUNER"}; }
    bool hasGainMode(const int, const size_t) const override { return true; }
    void setGainMode(const int, const size_t, const bool automatic) override { _agc = automatic; }
    bool getGainMode(const int, const size_t) const override { return _agc; }
    void setGain(const int, const size_t, const double value) override { _gain = value; }
    void setGain(const int, const size_t, const std::string &, const double value) override { _gain = value; }
    double getGain(const int, const size_t) const override { return _gain; }
    double getGain(const int, const size_t, const std::string &) const override { return _gain; }
    SoapySDR::Range getGainRange(const int, const size_t) const override { return SoapySDR::Range(0, 50); }

    void setFrequency(const int, const size_t, const double f, const SoapySDR::Kwargs &) override { _freq = f; }
    void setFrequency(const int, const size_t, const std::string &, const double f, const SoapySDR::Kwargs &) override { _freq = f; }
    double getFrequency(const int, const size_t) const override { return _freq; }
    double getFrequency(const int, const size_t, const std::string &) const override { return _freq; }
    std::vector<std::string> listFrequencies(const int, const size_t) const override { return {"RF"}; }

    void setSampleRate(const int, const size_t, const double rate) override
    {
        if (rate <= 0) throw std::invalid_argument("sample rate must be positive");
        _rate = rate;
    }
    double getSampleRate(const int, const size_t) const override { return _rate; }
    void setBandwidth(const int, const size_t, const double bw) override { _bw = bw; }
    double getBandwidth(const int, const size_t) const override { return _bw; }

    bool hasHardwareTime(const std::string &) const override { return _has_time; }
    long long getHardwareTime(const std::string &) const override { return _time_ns0 + ticksNs(_counter); }
    void setHardwareTime(const long long timeNs, const std::string &) override
    {
        _time_ns0 = timeNs - ticksNs(_counter);
        _time_ns0_fixed = true;
    }

    // --- streaming -------------------------------------------------------------------------
    std::vector<std::string> getStreamFormats(const int, const size_t) const override
    {
        return {SOAPY_SDR_CF32, SOAPY_SDR_CS16};
    }
    std::string getNativeStreamFormat(const int, const size_t, double &fullScale) const override
    {
        fullScale = kCs16FullScale;
        return SOAPY_SDR_CS16;
    }

    SoapySDR::Stream *setupStream(const int direction, const std::string &format,
                                  const std::vector<size_t> &channels, const SoapySDR::Kwargs &args) override
    {
        if (direction != SOAPY_SDR_RX) throw std::invalid_argument("heimdalltest is receive-only");
        if (format != SOAPY_SDR_CF32 && format != SOAPY_SDR_CS16)
            throw std::invalid_argument("heimdalltest streams CF32 or CS16, not " + format);
        if (channels.size() > 1) throw std::invalid_argument("heimdalltest streams one channel at a time");
        const size_t ch = channels.empty() ? 0 : channels[0];
        if (ch >= kChannels) throw std::invalid_argument("no channel " + std::to_string(ch));
        auto *s = new TestStream{format, ch, size_t(argInt(args, "mtu", (long long)_mtu))};
        return reinterpret_cast<SoapySDR::Stream *>(s);
    }

    void closeStream(SoapySDR::Stream *stream) override { delete reinterpret_cast<TestStream *>(stream); }
    size_t getStreamMTU(SoapySDR::Stream *stream) const override { return reinterpret_cast<TestStream *>(stream)->mtu; }

    int activateStream(SoapySDR::Stream *, const int, const long long, const size_t) override
    {
        _counter = 0;
        _calls = 0;
        _start = std::chrono::steady_clock::now();
        if (!_time_ns0_fixed) _time_ns0 = hostNowNs();
        _active = true;
        return 0;
    }

    int deactivateStream(SoapySDR::Stream *, const int, const long long) override
    {
        _active = false;
        return 0;
    }

    int readStream(SoapySDR::Stream *stream, void *const *buffs, const size_t numElems, int &flags,
                   long long &timeNs, const long timeoutUs) override
    {
        auto *s = reinterpret_cast<TestStream *>(stream);
        flags = 0;
        if (_gone) return gone();
        if (!_active) return SOAPY_SDR_STREAM_ERROR;
        ++_calls;
        if (_timeout_every > 0 && _calls % _timeout_every == 0)
        {
            std::this_thread::sleep_for(std::chrono::microseconds(std::min<long>(timeoutUs, 10000)));
            return SOAPY_SDR_TIMEOUT;
        }
        if (_overflow_every > 0 && _calls % _overflow_every == 0)
        {
            _counter += _overflow_skip;  // the samples a slow host lost
            return SOAPY_SDR_OVERFLOW;
        }
        size_t n = std::min(numElems, s->mtu);
        if (_disappear_after > 0)
        {
            const long long left = _disappear_after - _delivered;
            if (left <= 0)
            {
                _gone = true;
                return gone();
            }
            n = std::min<size_t>(n, size_t(left));
        }
        if (_paced)
        {
            const auto due = _start + std::chrono::nanoseconds(ticksNs(_counter + n));
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(timeoutUs);
            if (due > deadline)
            {
                std::this_thread::sleep_until(deadline);
                return SOAPY_SDR_TIMEOUT;
            }
            std::this_thread::sleep_until(due);
        }
        fill(s, buffs[0], n);
        if (_has_time)
        {
            flags |= SOAPY_SDR_HAS_TIME;
            timeNs = _time_ns0 + ticksNs(_counter);
        }
        _counter += n;
        _delivered += n;
        return int(n);
    }

private:
    long long ticksNs(long long ticks) const { return (long long)std::llround(double(ticks) * 1e9 / _rate); }

    int gone()
    {
        if (_disappear_throw) throw std::runtime_error("heimdalltest: device disappeared (USB unplugged)");
        return SOAPY_SDR_STREAM_ERROR;
    }

    void fill(const TestStream *s, void *buff, size_t n) const
    {
        const long double f = (long double)_tone_hz * (long double)(s->channel + 1);
        // Exact phase at the first sample, then a rotating phasor (error ~1e-13 over an MTU).
        const long double cycles = std::fmod((long double)_counter * f, (long double)_rate) / (long double)_rate;
        std::complex<double> ph = std::polar(_amplitude, double(2.0L * M_PIl * cycles));
        const std::complex<double> step = std::polar(1.0, double(2.0L * M_PIl * f / (long double)_rate));
        if (s->format == SOAPY_SDR_CF32)
        {
            auto *out = static_cast<std::complex<float> *>(buff);
            for (size_t i = 0; i < n; ++i, ph *= step) out[i] = std::complex<float>(ph);
        }
        else
        {
            auto *out = static_cast<std::complex<int16_t> *>(buff);
            for (size_t i = 0; i < n; ++i, ph *= step)
                out[i] = {int16_t(std::lround(ph.real() * kCs16FullScale)), int16_t(std::lround(ph.imag() * kCs16FullScale))};
        }
    }

    SoapySDR::Kwargs _args;
    double _tone_hz, _amplitude;
    bool _paced, _has_time;
    size_t _mtu;
    long long _overflow_every, _overflow_skip, _timeout_every, _disappear_after;
    bool _disappear_throw;
    bool _time_ns0_fixed = false;
    long long _time_ns0 = 0;

    double _rate = 1e6, _freq = 100e6, _bw = 0, _gain = 0;
    bool _agc = false;
    std::string _antenna = "RX";

    bool _active = false, _gone = false;
    long long _counter = 0, _calls = 0, _delivered = 0;
    std::chrono::steady_clock::time_point _start;
};

SoapySDR::KwargsList findHeimdallTest(const SoapySDR::Kwargs &args)
{
    if (args.count("driver") && args.at("driver") != "heimdalltest") return {};
    SoapySDR::Kwargs found = args;  // echo every argument: SoapySDR caches devices by these
    found["driver"] = "heimdalltest";
    if (!found.count("serial")) found["serial"] = "0";
    found["label"] = "Heimdall test device " + found["serial"];
    return {found};
}

SoapySDR::Device *makeHeimdallTest(const SoapySDR::Kwargs &args) { return new HeimdallTestDevice(args); }

SoapySDR::Registry registerHeimdallTest("heimdalltest", &findHeimdallTest, &makeHeimdallTest, SOAPY_SDR_ABI_VERSION);

}  // namespace
