"""A Gateway driven in process by a test: its committer runs while the test's scenario does."""
import asyncio


def run(gw, scenario):
    """asyncio.run the coroutine function scenario() beside gw's committer task."""
    async def main():
        task = asyncio.create_task(gw.commit.run())
        try:
            await scenario()
        finally:
            task.cancel()
    asyncio.run(main())
