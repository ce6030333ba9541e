import asyncio
import signal
import sys

from callengine import Call, Engine, EngineConfig

listen = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0:5060"
engine = Engine(EngineConfig(listen=[listen], metrics=None))


@engine.on_call("1800*")  # fnmatch pattern or compiled regex on the called number
async def toll_free(call: Call) -> None:
    await call.answer()
    digit = await call.play(["welcome", "menu"])  # barge-in returns the digit
    digits = digit or await call.gather(max_digits=4, timeout=5, terminator="#")
    result = await call.record("voicemail/x.wav", max_seconds=30, silence_timeout=5)
    print(f"{call.caller} pressed {digits!r}, left {result.seconds:.1f} s ({result.reason})")
    await call.hangup()


async def main() -> None:
    await engine.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()  # serve until Ctrl-C or SIGTERM
    await engine.stop()  # drain: new calls get 503, active calls end


asyncio.run(main())
