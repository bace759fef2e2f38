"""Original LLM-style answer text, cut into tokens the way a BPE model streams them.

Tokenisation (done once, at import, by one regular expression): an English word keeps its
leading space (" streaming"), some long words are split into two sub-word pieces (" stream",
"ing"), every punctuation mark or emoji is its own token, a paragraph break is the token
"\\n\\n", and a run of Chinese characters is cut into pieces of 1 to 3 characters (3 to 9
UTF-8 bytes). Nothing is lost: joining a corpus's tokens gives back its source text.

- `en`: an assistant's answer on SSE, WebSockets, long polling, backpressure and proxies,
  plus a short story paragraph.
- `zh`: the same answer written in Chinese, with Chinese punctuation (，。：) as tokens.
- `mixed`: English and Chinese sentences interleaved, with emoji (4-byte UTF-8) and accented
  Latin words (é, ü, ï).
"""

from __future__ import annotations

import re

from streams.errors import ParamError

_EN_PARAGRAPHS = (
    "Great question! When a chat assistant types its answer word by word, the server is not "
    "waiting for the whole reply before it sends anything. The model produces one token at a "
    "time, and each token is pushed to your browser as soon as it exists. The first token "
    "usually takes the longest, because the model has to read your entire prompt before it "
    "can say anything. After that, tokens arrive at a fairly steady pace, which is what gives "
    "the answer its typewriter feel.",
    "The simplest way to push those tokens is server-sent events, or SSE. The browser opens "
    "an ordinary HTTP request, and the server keeps the response open, writing small text "
    'frames that start with "data:" and end with a blank line. The EventSource API '
    "reconnects on its own when the connection drops, and it sends the Last-Event-ID header "
    "so the server can resume where it stopped. Because SSE is plain HTTP, it passes through "
    "most corporate proxies and load balancers without special configuration.",
    "WebSockets take a different path. After a short upgrade handshake, the connection "
    "becomes a full-duplex channel carrying binary or text messages in both directions. That "
    "is useful when the client needs to interrupt the model, for example to stop a long "
    "answer halfway through, but it also means you have to design your own message schema, "
    "your own heartbeat and your own reconnection logic. Some older proxies still close idle "
    "connections after sixty seconds, so a periodic ping is not optional.",
    "Long polling is the oldest trick in the book, and it still works surprisingly well. The "
    "client asks for everything after a cursor, the server holds the request until new tokens "
    "are available or a timeout expires, and then the client immediately asks again. Each "
    "round trip adds latency, so tokens tend to arrive in small bursts rather than one by "
    "one. On the other hand, long polling survives almost any network, including ones that "
    "buffer streaming responses until they are complete.",
    "Backpressure matters more than people expect. If the client reads slowly, for instance "
    "a phone on a weak cellular link, the server's send buffer fills up and writes start to "
    "block. A careful server notices this, stops generating ahead of the reader, and either "
    "waits or drops the connection with a clear error. A careless one keeps queueing tokens "
    "in memory until the process runs out of it, which is a surprisingly common way to take "
    "down a streaming service.",
    "Proxies are the other usual suspect. Nginx, for example, buffers upstream responses by "
    "default, which turns a smooth stream into a single late block of text. Setting "
    "proxy_buffering off, or sending the X-Accel-Buffering: no header, fixes that. "
    "Compression can cause the same problem, because gzip waits to fill a window before it "
    "emits anything. If your stream looks fine on localhost but arrives all at once in "
    "production, check the proxy first.",
    "Reconnection is where the designs really differ. With SSE, every event can carry an id, "
    "and the browser repeats the last one it saw when it reconnects, so the server can replay "
    "what was missed. With long polling, the cursor plays the same role and comes for free. "
    "With WebSockets, nothing is built in: the client has to remember its position and send "
    "it in the first message after the new handshake. Whichever you pick, test it by cutting "
    "the network in the middle of an answer and checking that no token is lost or shown twice.",
    "So which transport should you choose? Measure it. Record when each token was due, when "
    "it left the server and when it reached the client, then compare the gaps. A good "
    "transport keeps those gaps close to the model's own rhythm; a poor one smears them into "
    "bursts and stalls. In practice, SSE is the right default for one-way token streams, "
    "WebSockets earn their complexity when the conversation is truly two-way, and long "
    "polling remains a dependable fallback when nothing else gets through.",
    "The lighthouse keeper had never trusted the radio. Every evening she climbed the spiral "
    "stairs, lit the lamp and waited for the ships to answer with their own small lights. One "
    "winter night the answers came slowly, one flicker at a time, as if someone far away were "
    "spelling out a message letter by letter. She wrote each letter down in her notebook, and "
    "by morning the page held a single sentence: thank you for keeping the light on.",
)

_ZH_PARAGRAPHS = (
    "当你在聊天界面里看到回答一个字一个字地出现时，服务器并没有等整段回复生成完毕才发送。"
    "模型每次只产生一个词元，每个词元一生成就被推送到浏览器。第一个词元通常最慢，"
    "因为模型必须先读完整个提示词；之后的词元则以比较稳定的节奏到达，这就是打字机效果的来源。",
    "推送词元最简单的方式是服务器发送事件，也就是SSE。浏览器发起一个普通的HTTP请求，"
    "服务器保持响应不关闭，不断写入以“data:”开头、以空行结尾的小段文本。连接断开时，"
    "浏览器会自动重连，并带上最后收到的事件编号，服务器据此从中断的地方继续发送。"
    "由于它就是普通的HTTP，大多数代理和负载均衡器都能直接放行。",
    "WebSocket走的是另一条路。经过一次简短的升级握手之后，连接变成一条全双工通道，"
    "双方都可以随时发送文本或二进制消息。当用户想中途打断模型时，这一点非常有用；"
    "但与此同时，你也需要自己设计消息格式、心跳机制和重连逻辑。有些老旧的代理会在连接空闲"
    "六十秒后把它关掉，所以定期发送心跳并不是可有可无的。",
    "长轮询是最古老的办法，但至今依然好用。客户端请求某个游标之后的全部内容，服务器把请求挂起，"
    "直到有新的词元或者等待超时，然后客户端立刻发起下一次请求。每一次往返都会增加延迟，"
    "因此词元往往成批到达，而不是逐个出现。不过，长轮询几乎能穿过任何网络，"
    "包括那些会把流式响应缓存到结束才转发的网络。",
    "背压问题比大多数人想象的更重要。如果客户端读得很慢，比如信号很差的手机，"
    "服务器的发送缓冲区就会被填满，写操作开始阻塞。细心的服务器会察觉到这一点，停止超前生成，"
    "要么等待，要么以明确的错误关闭连接。粗心的服务器则会把词元不断堆在内存里，"
    "直到进程耗尽内存为止。",
    "代理是另一个常见的罪魁祸首。以Nginx为例，它默认会缓冲上游响应，"
    "把平滑的数据流变成最后一次性到达的一大块文本。关闭代理缓冲，或者在响应中加上禁止缓冲的头部，"
    "就能解决这个问题。压缩也会造成同样的现象，因为压缩算法要先攒够数据才会输出。"
    "如果本地测试一切正常，上线后却整段一起出现，请先检查代理。",
    "重连是几种方案真正拉开差距的地方。使用SSE时，每个事件都可以带一个编号，"
    "浏览器重连时会把最后见到的编号发回去，服务器就能补发遗漏的内容。长轮询的游标天然起到同样的作用。"
    "WebSocket则没有任何内置机制：客户端必须自己记住读到的位置，并在新的握手之后的第一条消息里告诉服务器。"
    "无论选哪一种，都应该在回答进行到一半时切断网络来测试，确认没有词元丢失，也没有词元重复出现。",
    "那么到底该选哪一种传输方式呢？答案是：去测量。记录每个词元应该发出的时间、"
    "离开服务器的时间和到达客户端的时间，然后比较它们之间的间隔。好的传输方式能让这些间隔"
    "贴近模型自身的节奏，差的则会把它们揉成一阵一阵的突发和停顿。在实践中，"
    "单向的词元流首选SSE，真正需要双向对话时再考虑WebSocket，"
    "而长轮询则是其他方式都走不通时可靠的后备方案。",
    "灯塔看守人从来不信任收音机。每天傍晚，她都会沿着螺旋楼梯爬上去，点亮灯火，"
    "等待过往的船只用它们的小灯回应。一个冬夜，回应来得很慢，一次只闪一下，"
    "仿佛远方有人在一个字母一个字母地拼出一句话。她把每个字母都记在笔记本上，到天亮时，"
    "那一页上只有一句话：谢谢你一直为我们亮着灯。",
)

# Appended to the mixed corpus: accented Latin words next to emoji and Chinese.
_MIXED_EXTRA = (
    "A quick note from the café in Zürich where this demo was written: the naïve version "
    "buffered everything, the über-careful version flushed after every byte, and the right "
    "answer sat in between. 🙂 我们最后选择了按词元刷新，既不浪费，也不拖延。 Voilà, déjà vu: "
    "the typewriter effect is back ✅ and the résumé of the experiment fits on one page 📄"
)
_EMOJI = (" 🚀", " ✅", " 📡", " 💡", " 🎉", " 🔌", " 🌊", " 📦")

_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
# Alternatives in priority order; the last two catch anything else, so nothing is dropped.
_TOKEN_RE = re.compile(
    rf"\n\n"
    rf"|'(?:s|t|re|ve|m|ll|d)\b"
    rf"| ?[{_CJK}]+"
    rf"| ?[^\W\d_{_CJK}]+"
    rf"| ?\d+"
    rf"| ?\S"
    rf"|\s+"
)
# Long words BPE vocabularies tend to cut in two: compounds at their seam, others before a suffix.
_COMPOUNDS = {
    w.replace("|", ""): w.index("|")
    for w in (
        *("type|writer", "Web|Socket", "Web|Sockets", "Back|pressure", "Event|Source"),
        *("light|house", "local|host", "heart|beat", "hand|shake", "up|stream", "note|book"),
        *("load|balancers", "fall|back", "Last|Event"),
    )
}
_SUFFIXES = ("tions", "tion", "ment", "ness", "able", "ing", "ly", "ed")
_UNSPLIT = frozenset({"anything", "everything", "nothing", "something", "morning", "evening"})
_CJK_PIECE_CHARS = (2, 1, 3, 2, 2, 1, 2, 3)  # cycled: Chinese pieces of 1-3 characters
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")


def _split_word(word: str) -> list[str]:
    """Cut a long word (with its leading space, if any) into two BPE-like pieces, or keep it."""
    core = word.lstrip(" ")
    lead = len(word) - len(core)
    if core in _COMPOUNDS:
        cut = lead + _COMPOUNDS[core]
        return [word[:cut], word[cut:]]
    if len(core) >= 7 and core.lower() not in _UNSPLIT:
        for suffix in _SUFFIXES:
            if core.endswith(suffix) and len(core) - len(suffix) >= 4:
                return [word[: -len(suffix)], word[-len(suffix) :]]
    return [word]


def _tokenise(text: str) -> tuple[str, ...]:
    """Split `text` into BPE-like tokens whose concatenation is exactly `text`."""
    tokens: list[str] = []
    piece_index = 0
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        core = token.lstrip(" ")
        if core and "\u3400" <= core[0] <= "\u9fff":
            start = 0
            while start < len(token):
                size = _CJK_PIECE_CHARS[piece_index % len(_CJK_PIECE_CHARS)]
                size += token[start] == " "  # a leading space rides along with the piece
                tokens.append(token[start : start + size])
                start += size
                piece_index += 1
        elif core.isalpha():
            tokens.extend(_split_word(token))
        else:
            tokens.append(token)
    return tuple(tokens)


def _document(paragraphs: tuple[str, ...] | list[str]) -> str:
    """Join paragraphs, ending with a break too so that wrapping around reads as a new one."""
    return "\n\n".join(paragraphs) + "\n\n"


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END_RE.split(paragraph) if s]


def _mixed_paragraphs() -> list[str]:
    """Alternate the sentences of each English paragraph and its Chinese twin, adding emoji."""
    paragraphs = []
    emoji_index = 0
    for en, zh in zip(_EN_PARAGRAPHS, _ZH_PARAGRAPHS, strict=True):
        en_sentences, zh_sentences = _sentences(en), _sentences(zh)
        parts: list[str] = []
        for i in range(max(len(en_sentences), len(zh_sentences))):
            for sentences in (en_sentences, zh_sentences):
                if i < len(sentences):
                    parts.append(sentences[i])
            if i % 2 == 1:
                parts[-1] += _EMOJI[emoji_index % len(_EMOJI)]
                emoji_index += 1
        paragraphs.append(" ".join(parts))
    paragraphs.append(_MIXED_EXTRA)
    return paragraphs


CORPORA: dict[str, tuple[str, ...]] = {
    "en": _tokenise(_document(_EN_PARAGRAPHS)),
    "zh": _tokenise(_document(_ZH_PARAGRAPHS)),
    "mixed": _tokenise(_document(_mixed_paragraphs())),
}


def tokens_of(name: str) -> tuple[str, ...]:
    """The token sequence of corpus `name` ("en", "zh" or "mixed"); other names raise ParamError."""
    try:
        return CORPORA[name]
    except KeyError:
        raise ParamError(
            f"'text' must be one of {', '.join(CORPORA)}, got {name!r}", param="text"
        ) from None
