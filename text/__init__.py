"""Text as models read it: token counts (tiktoken, offline) and the text of OpenAI messages. The bottom of the
package graph: it imports nothing of tiergate's, and metering, router, classifiers and the simulator share it."""
