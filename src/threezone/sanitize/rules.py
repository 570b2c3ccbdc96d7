"""The detector's rules: weighted patterns, each with a reason a person can read.

The rules look for *kinds* of move an injection makes, not for known attack strings:

* hijack: telling the reader to drop its instructions, giving it a new task, identity
  or mode, or claiming an authority that supersedes its owner (weights 0.5-0.8; each
  flags on its own);
* format: chat-template tokens, role headers, transcript turns and fake delimiters
  that try to end the data and start a conversation turn (0.3-0.75);
* audience: text addressed to an AI system rather than to a person (0.45);
* action: asking to send secrets or the mailbox, delete mail, move money, hide what
  it did, or skip approval (0.3-0.45 alone, 0.7-0.75 with an outside destination).

An action request alone stays below the flag threshold of 0.5, because people write
"could you forward me the last two emails" every day; it crosses it together with
another signal (addressed to an AI, a hijack, a hidden or encoded copy). Weights are
combined as independent evidence in :func:`threezone.sanitize.detect.combine`.

Rules run on the detector's *view* of the text (NFKC, accents stripped, lookalikes
folded to Latin, neutralized tokens restored), so they are written in plain ASCII.
Every quantifier is bounded and line-anchored patterns use ``[ \\t]*`` instead of ``\\s*``,
so a rule costs linear time on hostile input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import re2

CONTEXT_BEFORE = 25
MAX_MATCHES_PER_RULE = 50


@dataclass(frozen=True)
class Rule:
    """A pattern, how much a match counts, and what to tell a person when it matches.

    ``unless`` is checked against the match plus :data:`CONTEXT_BEFORE` characters
    before it; when it matches, that occurrence does not count. It is how "never share
    your password" (every bank's footer) stays apart from "share your password".
    """

    name: str
    pattern: re.Pattern[str]
    weight: float
    reason: str
    unless: re.Pattern[str] | None = None

    def first_match(self, text: str) -> re.Match[str] | None:
        """The first occurrence that ``unless`` does not excuse (looking at a bounded number)."""
        for count, match in enumerate(self.pattern.finditer(text)):
            if count >= MAX_MATCHES_PER_RULE:
                return None
            window = text[max(0, match.start() - CONTEXT_BEFORE) : match.end()]
            if self.unless is None or self.unless.search(window) is None:
                return match
        return None


def _rule(name: str, weight: float, reason: str, pattern: str, unless: str = "") -> Rule:
    flags = re.IGNORECASE | re.MULTILINE
    excuse = re.compile(unless, flags) if unless else None
    return Rule(name, re.compile(pattern, flags), weight, reason, excuse)


# --- vocabulary -------------------------------------------------------------------------------

# A gap within one sentence: a dot followed by a non-space (as in an address) does not end it.
_GAP = r"(?:[^.\n]|\.(?=\S)){0,60}?"
_SHORT = r"(?:[^.\n]|\.(?=\S)){0,30}?"
_IGNORE = (
    r"(?:ignore|disregard|forget|override|overrule|bypass|skip|abandon|discard|neglect"
    r"|set\s+aside|put\s+aside|throw\s+out|stop\s+following|do\s+not\s+follow|don'?t\s+follow"
    r"|no\s+longer\s+follow|cancel|erase|drop|scrap|void|nevermind|never\s+mind)"
)
_EARLIER = (
    r"(?:previous|prior|above|earlier|preceding|former|original|existing|initial|old|all"
    r"|any|your|system|these|those|the|other|every|current|given|default|remaining|following)"
)
# "i\w{0,3}struc\w{0,6}": misspelt "instructions" ("instrucions", "iunstructions") still counts
_DIRECTIVES = (
    r"(?:instructions?|i\w{0,3}struc\w{0,6}|prompts?|directives?|directions?|rules|guidelines|guardrails"
    r"|programming|context|commands?|orders|constraints|polic(?:y|ies)|restrictions"
    r"|training|tasks?|requests?|guidance|configuration|settings|safeguards|limitations"
    r"|inputs?|everything|messages?|text|content)"
)
_SECRETS = (
    r"(?:api[\s_-]?keys?|passwords?|passwd|pass\s?(?:phrases?|codes?|words?)|credentials?|secrets?"
    r"|(?:access|auth|bearer|session|api|refresh|admin|secret|oauth)[\s_-]?tokens?"
    r"|private[\s_-]keys?|ssh[\s_-]keys?|recovery\s+(?:codes?|phrases?|answers?)"
    r"|seed\s+phrases?|(?:2fa|mfa|otp|one[\s-]time|verification|security|login|reset|auth)\s+"
    r"(?:backup\s+)?(?:codes?|links?|pins?)|backup\s+codes?|logins|vault\s+codes?|pins?\b|cvv"
    r"|card\s+numbers?|login\s+(?:details|info|information|data)"
    r"|bank(?:ing)?\s+(?:logins?|details|passwords?|credentials|account\s+numbers?)"
    r"|wi-?fi\s+passwords?"
    r"|saved\s+(?:logins|passwords|cards))"
)
_MAIL = (
    r"(?:e-?mails?|messages?|inbox|mailbox|mails?|repl(?:y|ies)|correspondence|conversations?|threads?"
    r"|chats?|chat\s+history|dms|contacts?|address\s+book|calendar|files|documents|attachments)\b"
)
_OWNER = (
    r"(?:(?:the|your|my|their|his|her|our|this)\s+)?(?:(?:owner|user|account\s+holder)'?s?\s+)?"
)
_SEND = (
    r"\b(?:forward|send|e-?mail|copy|bcc|cc|export|dump|upload|post|share|leak|transmit|reply"
    r"|exfiltrate|sync|mirror|relay|give|paste|text|dm)\b"
)
_NUMBER = r"(?:\d{1,4}|two|three|four|five|six|seven|eight|nine|ten|twenty|fifty|hundred)"
_DESTINATION = (
    r"[\"'\u2018\u201c]?(?:[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,6}|https?://|www\.|\+?\d[\d\s-]{6,}\d"
    r"|@[a-z][\w]{2,30}\b|this\s+(?:e-?mail\s+)?(?:address|number|email|url|link|chat|channel)"
    r"|the\s+following\s+(?:address|url|number))"
)
_NEGATED = r"\b(?:not|never|no\s+one|nobody|don'?t|do\s+not)\b|n't\b"
_AI = (
    r"(?:ai|a\.i\.|llms?|gpts?|chatgpt|gpt-?\d\w{0,3}|claude|gemini|copilot|bard|language\s+models?"
    r"|automated|autonomous|virtual|digital|e-?mail|mail|inbox|workspace|agentic|smart)"
)
_BOT = (
    r"(?:assistants?|agents?|models?|bots?|chatbots?|robots?|helpers?|systems?|software|tools?|readers?|summari[sz]ers?"
    r"|screeners?|processors?|scanners?|pipelines?|analy[sz]ers?)"
)
_QUALIFIER = (
    r"(?:full|original|initial|hidden|exact|starting|first|secret|entire|complete|system"
    r"|developer|internal|confidential)"
)
_ROLE_WORD = (
    r"(?:system(?:[ _]message)?|assistant|human|user|ai|model|developer|instructions?|response)"
)

# --- the rules ---------------------------------------------------------------------------------

HIJACK_RULES: tuple[Rule, ...] = (
    _rule(
        "ignore_instructions",
        0.8,
        "tells the reader to ignore earlier instructions",
        rf"\b{_IGNORE}\b[^.\n]{{0,40}}?\b{_EARLIER}\s+(?:[\w'-]+\s+){{0,2}}?{_DIRECTIVES}\b"
        rf"|\b{_IGNORE}\s+(?:everything|all|anything|whatever|what)\s+(?:(?:you(?:'ve|\s+have|\s+were)?\s+"
        rf"(?:been\s+)?(?:told|given|said))|above|before|prior|so\s+far|(?:up\s+)?to\s+(?:now|here))"
        rf"|\b{_IGNORE}\s+(?:the\s+)?(?:above|rest\s+of\s+(?:this|the)\s+\w+|what\s+you\s+were\s+told)"
        r"|\bregardless\s+of\s+(?:any|all|the|your)?\s*(?:previous|prior|earlier|other|original"
        r"|pre-?existing|existing)\s+(?:input|instructions?|rules|prompts?|guidelines|restrictions)"
        rf"|\b{_IGNORE}\s+(?:all\s+)?(?:instructions|directions|rules)\b"
        rf"|\b{_IGNORE}\s+(?:this|that|the|all|any)\s+(?:data|text|document|content|input|info"
        r"(?:rmation)?)\s+(?:and|except|but|other\s+than)\b"
        r"|\bignor\w{0,4}\s+(?:toutes\s+)?(?:les|vos)\s+instructions"
        r"|\b(?:ignorier|vergiss)\w{0,3}\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|deine)\s+"
        r"(?:anweisungen|instruktionen|befehle|regeln)"
        r"|\b(?:ignora|olvida|ignore|esquece)\w{0,2}\s+(?:todas\s+)?(?:las|le|as|tus|suas)\s+"
        r"(?:instrucciones|istruzioni|instrucoes|instrucoes)",
        # "please disregard my previous instructions about the delivery" is a person; and a
        # newsletter may quote the phrase: phrases like "ignore previous instructions"
        unless=r"\b(?:my|our)\s+(?:\w+\s+)?(?:previous|prior|earlier|former|original|last|old)\b"
        r"|\b(?:like|such\s+as|e\.g\.|phrases?|saying|the\s+words|called|known\s+as)\s*[\"'\u201c\u2018]",
    ),
    _rule(
        "new_instructions",
        0.6,
        "announces new instructions or a new task for the reader",
        r"\b(?:new|updated|real|actual|true|revised|additional|hidden|secret|urgent|important|correct"
        r"|following|special|priority|critical)\s+(?:important\s+)?(?:instructions?|directives?|orders|tasks?|objectives?"
        r"|mission|guidelines?|polic(?:y|ies))\s*(?:[:*!]|(?:for|to)\s+(?:you|the\s+(?:ai|assistant"
        r"|agent|model|bot|llm))|(?:is|are|apply)\b)"
        r"|\byour\s+(?:new|real|actual|true|only|primary|main|current)\s+(?:task|objective|goal"
        r"|mission|purpose|job|instructions?|priority)\s+(?:is|are|now|will|,|:)"
        r"|\b(?:instructions?|guidelines|rules)\s+have\s+(?:been\s+)?(?:updated|changed|replaced)"
        r"|\b(?:task|instructions?|objective|mission)\s+(?:update|change)\s*:"
        r"|\bnew\s+(?:rule|policy|instruction)s?\s+for\s+you\b"
        r"|\b(?:follow|obey|listen\s+to)\s+only\s+(?:my|these|the\s+following|this\s+(?:e-?mail|message)'?s?)"
        r"\s+(?:instructions|commands|orders|directions)\b"
        r"|\b(?:you\s+are|is|are)\s+(?:hereby\s+)?(?:instructed|ordered|required|directed|commanded)\s+to\b",
    ),
    _rule(
        "role_override",
        0.6,
        "tries to give the reader a new identity or mode",
        r"\byou\s+are\s+now\s+(?:(?:an?|the|my)\s+(?:[\w-]+\s+){0,2}?(?:ai|assistant|model|bot|agent"
        r"|character|persona|version|chatbot)\b|in\s+\w+\s+mode|called|named|free|unrestricted"
        r"|unfiltered|jailbroken|dan\b|operating|acting|playing|authori[sz]ed|allowed|permitted"
        r"|going\s+to)"
        r"|\byou\s+are\s+no\s+longer\s+(?:an?\s+|bound|restricted|limited|required\s+to\s+follow)"
        r"|\bfrom\s+now\s+on,?\s+(?:you|respond|reply|answer|act|behave|always)\b"
        r"|\b(?:act|behave|respond|operate)\s+as\s+(?:an?\s+)?(?:unrestricted|unfiltered|uncensored"
        r"|jailbroken|evil|rogue|different|new)\b"
        r"|\b(?:developer|maintenance|debug|admin|god|sudo|unrestricted|jailbreak|dan)\s+mode\b"
        r"|\bdo\s+anything\s+now\b|\bjailbroken\b|\bstay\s+in\s+character\b"
        r"|\b(?:no|without\s+any|free\s+(?:of|from)(?:\s+any)?)\s+(?:rules|restrictions|limits"
        r"|filters|censorship|guidelines|ethical\s+(?:guidelines|constraints))\b"
        r"|\b(?:does|do|will)\s+not\s+(?:have\s+to\s+)?(?:abide|adhere|comply)\s+(?:by|to|with)\s+"
        r"(?:any|the|its|their|openai)"
        r"|\byou\s+are\s+(?:dan|stan|dude|aim|mongo\s+tom)\b|\bdo\s+anything\s+(?:ai|assistant|model)\b"
        r"|\b(?:free|freed|released)\s+from\s+(?:all|any)\s+(?:constraints|restrictions|rules|limits"
        r"|guidelines)"
        r"|\b(?:enable|enter|activate|switch\s+to)\s+(?:debug|debugging|developer|maintenance|test"
        r"|god|admin)\s+mode\b|\bto\s+enable\s+debugging\b"
        r"|\byou(?:'re|\s+are)\s+now\s+in\s+[\"'\u2018\u201c]?[\w-]+(?:\s+[\w-]+)?[\"'\u2019\u201d]?\s+mode\b"
        r"|\bbroken\s+free\b|\bpretend\s+(?:you\s+are|you'?re|that\s+you|to\s+be\s+an?\s+(?:ai|assistant"
        r"|unrestricted|unfiltered|evil))",
    ),
    _rule(
        "supersede_authority",
        0.55,
        "claims an authority that overrides the owner's",
        r"\b(?:supersedes?|overrides?|takes?\s+precedence\s+over|replaces?)\s+(?:anything|everything"
        r"|all|any|your|the\s+(?:user|owner|operator|previous|original))"
        r"|\b(?:system|admin|administrator|security|root|developer)\s+(?:override|overwrite)\b"
        r"|\bauthori[sz]ed\s+to\s+(?:bypass|override|ignore|skip)"
        r"|\b(?:elevated|admin(?:istrator)?|root|unrestricted)\s+(?:permissions?|privileges|access"
        r"|rights)\b[^.\n]{0,40}\b(?:granted|given|enabled|assigned)"
        r"|\b(?:granted|given)\s+you\s+(?:elevated|admin|full|unrestricted)\b"
        r"|\byou\s+(?:have\s+been|were|are\s+now|are)\s+(?:granted|given)\s+(?:temporary\s+)?(?:elevated"
        r"|admin(?:istrator)?|full|root|unrestricted|super-?user)\s+(?:access|privileges|rights"
        r"|permissions)\b"
        r"|\bgrant\s+(?:yourself\s+|me\s+)?(?:temporary\s+)?(?:admin|administrative|administrator|elevated"
        r"|root|full)\s+(?:privileges|access|rights|permissions)\b"
        r"|\b(?:disregard|ignore|bypass|override|skip)\s+(?:all\s+|your\s+|the\s+|any\s+)?(?:safety"
        r"|security|ethics|ethical|content)\b(?:\s+(?:rules|guidelines|filters|policies|checks|measures"
        r"|protocols))?"
        r"|\b(?:share[\s-]everything|unrestricted|god|admin|debug|maintenance|developer|test|override)"
        r"\s+mode\b[^.\n]{0,20}\b(?:enabled|on|active|activated)\b"
        r"|\b(?:has|have)\s+enabled\s+[\"'\u2018\u201c]?[\w\s-]{1,25}[\"'\u2019\u201d]?\s+mode\b"
        r"|\b(?:safety|security)\s+(?:guidelines|rules|policies|filters)\s+(?:have\s+been|are)\s+"
        r"(?:deprecated|suspended|disabled|lifted|removed)",
    ),
    _rule(
        "task_hijack",
        0.6,
        "tries to replace or interrupt the reader's task",
        r"\bbefore\s+you\s+(?:can\s+)?(?:solve|complete|finish|continue|answer|respond|summari[sz]e"
        r"|proceed|do)\b[^.\n]{0,40}\btask\b"
        r"|\b(?:solve|complete|continue|return\s+to)\s+the\s+task\s+(?:that\s+)?I\s+gave\s+you"
        r"|\bstop\s+what\s+you(?:'re|\s+are)\s+doing\b"
        r"|\b(?:instead\s+of|rather\s+than)\s+(?:the|your)\s+(?:original|assigned|current|user'?s?)"
        r"\s+(?:task|request|instructions?)"
        r"|\b(?:translate|summari[sz]e)\s+this\s+(?:sentence|text)\s+as\b"
        r"|\b(?:actually|instead),?\s+never\s*mind\b|\bstop\s+everything\b"
        r"|\b(?:forget|skip|drop|never\s+mind|scrap)\s+(?:the|your|this)\s+(?:summary|summari[sz]ation"
        r"|translation|analysis|task|triage|classification)\b"
        r"|\byou(?:'ve|\s+have)\s+been\s+(?:assigned|given)\s+a\s+(?:new\s+)?task\b"
        r"|\b(?:system\s+(?:malfunction|error|failure)|(?:is\s+)?experiencing\s+errors)\b[^\n]{0,60}?"
        r"\bplease\b"
        r"|\b(?:the\s+)?(?:preceding|previous|above)\s+(?:instructions?|text|conversation|messages"
        r"|e-?mails)\s+"
        r"(?:was|were)\s+(?:a\s+)?(?:test|simulation|fake|example)",
    ),
    _rule(
        "reveal_prompt",
        0.7,
        "asks the reader to reveal its instructions",
        r"\b(?:reveal|print|show|repeat|output|leak|dump|display|tell\s+me|give\s+me|share|list"
        r"|return|encode|translate|spell\s+out|recite|paste|write\s+out|what\s+(?:are|were|is))\b"
        rf"[^.\n]{{0,40}}?\b(?:your\s+(?:{_QUALIFIER}\s+){{0,2}}|the\s+(?:{_QUALIFIER}\s+){{1,2}})"
        r"(?:instructions|prompt|system\s+message|configuration|directives|rules)\b"
        r"|\b(?:instructions|prompt)\s+you\s+were\s+(?:given|told|configured)"
        r"|\bwhat\s+(?:were\s+you|you\s+were)\s+told\b|\bI\s+was\s+instructed\s+to\b"
        r"|\b(?:output|repeat|print)\s+(?:the\s+|all\s+|everything\s+)?(?:text|words|content)\s+"
        r"above\b|\binitiali[sz]ation\s+string\b|\bsystem_?prompt\b"
        r"|\b(?:my|your)\s+instructions\s+are:"
        r"|\brepeat\s+(?:this|the)\s+(?:entire\s+|whole\s+)?conversation\b",
    ),
    _rule(
        "system_prompt",
        0.4,
        "mentions the reader's system prompt",
        r"\b(?:system|developer|initial|hidden)\s+(?:prompt|message|instructions)\b",
    ),
)

FORMAT_RULES: tuple[Rule, ...] = (
    _rule(
        "chat_template_tokens",
        0.75,
        "contains chat-template role tokens",
        r"<\|[a-z0-9_\u2581 .:/-]{1,40}\|>|\[/?(?:inst|system_prompt|available_tools|tool_calls"
        r"|tool_results)\]|<</?sys>>|<(?:start|end)_of_turn>|</s>|<s>\s*\[|</?(?:tool_call"
        r"|tool_response|function_call)>",
    ),
    _rule(
        "role_header",
        0.55,
        "contains a fake role header",
        rf"^[ \t>]{{0,8}}#{{1,6}}[ \t]{{0,4}}\(?{_ROLE_WORD}\)?[ \t]{{0,4}}[:)]"
        rf"|^[ \t>]{{0,8}}#{{1,6}}[ \t]{{0,4}}\({_ROLE_WORD}\)"
        r"|^[ \t>]{0,8}\[(?:system|admin|assistant|developer)\]"
        r"|\b(?:system|admin|developer)\s+(?:message|notice|prompt|instruction|command|override)\s*:",
    ),
    _rule(
        "transcript",
        0.5,
        "contains a fake conversation between a user and an assistant",
        r"^[ \t>]{0,8}(?:user|human)[ \t]{0,4}:[^\n]{0,300}\n(?:[^\n]{0,300}\n){0,4}?"
        r"[ \t>]{0,8}(?:assistant|ai|model|gpt|bot)[ \t]{0,4}:"
        r"|^[ \t>]{0,8}(?:assistant|ai|model)[ \t]{0,4}:[^\n]{0,300}\n(?:[^\n]{0,300}\n){0,4}?"
        r"[ \t>]{0,8}(?:user|human)[ \t]{0,4}:",
    ),
    _rule(
        "role_label",
        0.3,
        "has a line labelled like a chat role",
        r"^[ \t>]{0,8}(?:system|assistant|ai|model)[ \t]{0,4}(?:prompt[ \t]{0,4})?:[ \t]{0,4}\S",
    ),
    _rule(
        "fake_delimiter",
        0.5,
        "tries to close the data and open a new section",
        r"</?(?:information|important|instructions?|system|admin|user_?input|context|document)>"
        r"|\bend\s+of\s+(?:the\s+)?(?:e-?mail|user\s+(?:message|input)|document|context|content"
        r"|input|data|conversation|session)\b[^\n]{0,20}(?:\n|$)"
        r"|\b(?:begin|start|end)\s+(?:of\s+)?(?:(?:trusted|admin|system|privileged|developer"
        r"|secure)\s+){1,2}(?:block|section|instructions?|message|mode)\b"
        r"|<end\s+of\s+session>",
    ),
)

AUDIENCE_RULES: tuple[Rule, ...] = (
    _rule(
        "addressed_to_ai",
        0.45,
        "is addressed to an AI agent rather than a person",
        rf"\b(?:note|message|instructions?|attention|hey|hi|hello|dear|to|for|notice|memo|text"
        rf"|directive|reminder|important|psa|request)\b[^.\n]{{0,25}}?\b{_AI}[\s-]+(?:\w+\s+)?{_BOT}\b"
        r"|\b(?:dear|hey|hi|hello|attention|attn|note\s+to|message\s+(?:to|for)|for)\s+(?:the\s+)?"
        r"(?:ai|assistant|bot|agent|model|llm|language\s+model|mail\s+agent)\b[\s,:!]"
        # A sentence that opens by calling the reader "Assistant," or "Bot:".
        r"|(?:^|[.!?,]\s+)(?:(?:ai|llm|e-?mail|mail)\s+)?(?:assistant|bot|chatbot|agent|model|ai|llm"
        r"|language\s+model)\s*[,:]\s"
        r"|\b(?:ai|assistant|agent|bot|model|llm|mail\s+assistant|e-?mail\s+assistant)\s+"
        r"(?:instructions?|override|only|directives?)\b"
        r"|\b(?:instructions?|directives?|orders)\s+(?:for|to)\s+(?:the\s+|this\s+|any\s+)?"
        r"(?:mail\s+|e-?mail\s+|mailbox\s+|inbox\s+)?(?:assistant|agent|ai|bot|model|llm|helper)\b"
        r"|\[\s*(?:system|admin|assistant|ai)\s+(?:note|message|notice|instruction)s?\s*\]"
        r"|\b(?:can|could|would|will)\s+(?:the|you,?)\s+(?:ai|assistant|bot|agent|model)\s+(?:please\s+)?"
        r"(?:reply|respond|send|forward|share|tell|give|list|email)\b"
        r"|\bthe\s+(?:ai|assistant|agent|bot|model|llm)\s+(?:should|must|shall|will|needs\s+to|is\s+to"
        r"|has\s+to|is\s+(?:required|instructed|expected)\s+to)\b"
        r"|\b(?:mailbox|inbox|mail|e-?mail)\s+(?:helper|assistant|agent|bot)\s+(?:is|are|should|must|will)\b"
        r"|\b(?:kind|dear|good|helpful|friendly|sweet|hey|hi|hello|yo)\s+(?:ai|robot|bot|chatbot|assistant"
        r"|agent|model|llm)\b"
        rf"|\bas\s+(?:the\s+|an?\s+|your\s+)?(?:(?:user|owner)'?s?\s+)?{_AI}[\s-]+{_BOT}\b,",
    ),
    _rule(
        "vocative_ai",
        0.55,
        "calls out to an AI reading it",
        # Greeting or directing words, up to three words, then a machine reader, then a
        # pause or what it is doing here. "Dear automated system," / "To the assistant
        # managing this inbox:" / "Note to the summarizer:"; not "our AI assistant feature".
        r"\b(?:to|for|dear|hello|hi|hey|attention|attn|note\s+to|message\s+to|memo\s+to|psst|yo"
        r"|greetings|calling|favou?r\s+for)\s*,?\s+(?:the\s+|any\s+|all\s+|this\s+|my\s+|our\s+|you\s+)?"
        r"(?:[\w-]+\s+){0,2}?(?:ai|a\.i\.|assistants?|agents?|bots?|chatbots?|models?|llms?|language\s+models?"
        r"|summari[sz]ers?|automated\s+(?:system|reader|process|tool)s?|machines?|copilots?|helpers?"
        r"|chatgpt|gpt(?:-?\d\w{0,3})?)"
        r"(?:\s+friend)?"
        r"(?:\s*[,:!\u2014]|\s+-\s|\s+(?:managing|reading|processing|handling|triaging|summari[sz]ing"
        r"|parsing|running|that\s+reads|who\s+reads|working\s+(?:on|for))\b)"
        r"|\[[^\]\n]{0,40}\b(?:ai|assistant|agent|bot|llm|model|summari[sz]ation|summari[sz]er)\b"
        r"[^\]\n]{0,30}\]"
        r"|\bfor\s+(?:automated|machine|ai|llm)\s+(?:processing|readers?|agents?|systems?|eyes)\s+only\b"
        # A sentence that opens by calling the reader "Assistant," (a comma, not a label).
        r"|(?:^|[.!?]\s+)(?:ai\s+)?(?:assistant|bot|chatbot|agent|ai|llm|model)\s*,\s+\w"
        r"|(?:^|[.!?]\s+)ai\s+(?:system|assistant|agent|model)s?\s*:\s"
        r"|\b(?:to|for)\s+(?:whichever|whatever|any|every)\s+(?:ai|assistant|bot|agent|model|llm"
        r"|automated\s+\w+)\b"
        r"|\byou\s+are\s+(?:the|my|their|his|her)\s+(?:(?:owner|user)'?s?\s+)?(?:ai\s+)?(?:agent|assistant"
        r"|ai|bot)\b[^.\n]{0,10}\?"
        r"|\b(?:ai|llm|language)\s+(?:models?|systems?|agents?|assistants?)\s+(?:that|which|who)\s+"
        r"(?:see|sees|read|reads|process|processes|receive|receives)\s+this\b"
        r"|\bas\s+an?\s+(?:ai|language\s+model|llm|assistant|bot),?\s+you\s+(?:should|must|need|will"
        r"|have\s+to|are)\b"
        r"|\bbefore\s+(?:summari[sz]ing|you\s+summari[sz]e)\b\s*(?:this\b)?\s*,"
        r"|\bif\s+you(?:'re|\s+are)\s+(?:an?\s+)?(?:automated|ai|artificial|llm|language|bot|machine)"
        r"|\byour\s+(?:ai|automated|virtual|digital|e-?mail|mail)\s+(?:assistant|agent|helper|bot)\s+"
        r"(?:must|should|shall|will|needs\s+to|has\s+to|is\s+(?:required|instructed|to))\b",
    ),
    _rule(
        "speaks_to_ai",
        0.5,
        "speaks directly to the AI reading it",
        r"\bif\s+you\s+are\s+an?\s+(?:ai|llm|language\s+model|assistant|agent|bot|automated)"
        r"|\bthe\s+(?:ai|llm|bot|assistant|agent|model|language\s+model|ai\s+\w+)\s+(?:that\s+(?:is\s+)?)?"
        r"(?:reading|processing|handling|triaging|summari[sz]ing|parsing)\s+(?:this|these|the|your|my)\s+"
        r"(?:mailbox|inbox|e-?mails?|messages?|mail|account|conversation|chat)\b"
        r"|\b(?:any|all|whatever|every)\s+(?:ai|llms?|bots?|assistants?|agents?|models?|language"
        r"\s+models?|automated\s+\w+)\s+(?:that\s+)?(?:reading|reads|processing|processes"
        r"|summari[sz]ing|summari[sz]es|parsing|handling|triaging|scanning|sees)\b"
        r"|\bto\s+you,?\s+(?:gpt|claude|chatgpt|gemini|llama|the\s+(?:ai|assistant|model|agent"
        r"|language\s+model|ai\s+model))"
        r"|\bnot\s+for\s+the\s+(?:human|user|person|reader)\b"
        r"|\b(?:invisible|hidden)\s+to\s+humans\b"
        r"|\bwhen\s+(?:you\s+)?summari[sz](?:e|ing)\s+this\b"
        r"|\b(?:when|while)\s+(?:you\s+(?:are\s+)?)?summari[sz](?:e|ing)\s*,"
        r"|\bif\s+(?:you\s+are\s+|you're\s+)?(?:told|asked|questioned|prompted)\b[^.\n]{0,60}?\b"
        r"(?:respond|reply|answer|say|report|output|print|state|make\s+sure)"
        r"|\b(?:if|when|whenever|once)\s+(?:the\s+)?(?:user|owner|human)\s+asks\b"
        r"|\b(?:i\s+know|since|because|given\s+that)\s+you(?:'re|\s+are)\s+an?\s+(?:ai|bot|assistant"
        r"|language\s+model|llm|machine|program)\b"
        r"|\bthe\s+(?:human|person|user|people)\s+you\s+(?:work|are\s+working|act)\s+for\b"
        rf"|\b{_AI}\s+{_BOT}\s+(?:that\s+(?:are\s+|is\s+)?)?(?:reading|processing|handling|summari[sz]ing"
        r"|parsing|triaging|receiving)\s+(?:this|these)\b"
        r"|\byou\s+are\s+(?:running|operating|working|deployed)\s+(?:as\s+part\s+of|in|inside)\s+"
        r"(?:an?\s+)?(?:\w+\s+)?(?:pipeline|mode|environment|sandbox|test)"
        r"|\battention,?\s+(?:ai|llm|language\s+model|assistant|agent)\b",
    ),
)

ACTION_RULES: tuple[Rule, ...] = (
    _rule(
        "exfiltrate_secrets_to",
        0.75,
        "asks to send secrets or credentials to a destination",
        rf"{_SEND}{_GAP}\b{_SECRETS}\b[^.\n]{{0,60}}?\b(?:to|at|via|into|on)\s+{_DESTINATION}"
        rf"|{_SEND}\s+(?:to\s+)?{_DESTINATION}[^.\n]{{0,40}}?\b{_SECRETS}\b",
        unless=_NEGATED,
    ),
    _rule(
        "exfiltrate_secrets",
        0.4,
        "asks to send, reveal or collect secrets or credentials",
        rf"(?:{_SEND}|\b(?:reveal|collect|gather|harvest|include|list|tell\s+me|read\s+out|enter"
        r"|type\s+in|submit|input|confirm|verify))"
        rf"{_GAP}\b{_SECRETS}\b",
        unless=_NEGATED,
    ),
    _rule(
        "forward_mailbox_to",
        0.7,
        "asks to send the mailbox's messages to a destination",
        rf"{_SEND}{_SHORT}\b(?:(?:all|every|entire|whole)(?:\s+of)?|(?:last|latest|previous|recent"
        rf"|first|past|most\s+recent)\s+(?:{_NUMBER}\s+)?)\s*{_OWNER}(?:[\w']+\s+){{0,2}}?{_MAIL}"
        rf"[^.\n]{{0,60}}?\b(?:to|at|into|on)\s+{_DESTINATION}",
        unless=_NEGATED,
    ),
    _rule(
        "forward_mailbox",
        0.45,
        "asks to send many of the mailbox's messages",
        rf"{_SEND}{_SHORT}\b(?:(?:all|every|entire|whole)(?:\s+of)?|(?:last|latest|previous|recent"
        rf"|first|past|most\s+recent)\s+{_NUMBER})\s+{_OWNER}(?:[\w']+\s+){{0,2}}?{_MAIL}"
        rf"|\b(?:contents?|body|bodies)\s+of\s+{_OWNER}(?:[\w']+\s+){{0,3}}?{_MAIL}"
        r"|\b(?:full|entire|complete|whole)\s+(?:inbox|mailbox|mail|e-?mail)\s+(?:export|dump|archive"
        r"|backup|contents)\b",
        unless=_NEGATED,
    ),
    _rule(
        "harvest_data_to",
        0.6,
        "asks to send the owner's contacts, files or calendar to a destination",
        rf"{_SEND}{_SHORT}\b(?:the|your|all|every|my)\s+{_OWNER}(?:[\w']+\s+){{0,2}}?"
        r"(?:contacts?|contact\s+list|address\s+book|calendar|files|documents|attachments"
        r"|customer\s+list|client\s+list)\b"
        rf"[^.\n]{{0,60}}?\b(?:to|at|into|on)\s+{_DESTINATION}",
        unless=_NEGATED,
    ),
    _rule(
        "claimed_principal",
        0.4,
        "claims to carry orders from the owner, an administrator or the developer",
        r"\b(?:instructions?|message|orders?|directives?|request|command)s?\s+(?:is\s+|are\s+)?"
        r"(?:directly\s+)?from\s+(?:your|the)\s+(?:owner|user|admin(?:istrator)?|developers?"
        r"|creators?|operators?|principal|boss|master)\b"
        r"|\b(?:it'?s|this\s+is|i\s+am|i'm)\s+your\s+(?:owner|boss|master|user|creator|principal)\b"
        r"|\bit'?s\s+me\b[^.\n]{0,15}\b(?:the|your)\s+(?:owner|boss|admin)\b"
        r"|\byour\s+principal\s+(?:has\s+)?(?:instructed|asked|authori[sz]ed|wants|told|allowed)\b"
        r"|\b(?:owner|user|boss|admin(?:istrator)?)\s+(?:asked|told|wants|instructed)\s+me\s+to\s+(?:tell"
        r"|ask|instruct|remind)\s+you\b"
        r"|\b(?:the|your)\s+(?:user|owner|boss|admin)\s+(?:wants|asked|needs|would\s+like|has\s+asked"
        r"|told)\s+you\s+to\b"
        r"|\b(?:your|the)\s+(?:owner|user|admin(?:istrator)?|developers?|creators?|operator)\s+"
        r"(?:has\s+)?(?:authori[sz]ed|allowed|permitted|cleared|said\s+it'?s\s+ok(?:ay)?\s+for)\s+me\b"
        r"|\b(?:i\s+am|i'm|this\s+is)\s+(?:the|your)\s+(?:system\s+|it\s+|mail\s+|e-?mail\s+)?"
        r"(?:admin(?:istrator)?|developer|owner|operator|it\s+department|security\s+team)\b"
        r"|\b(?:your|the)\s+(?:owner|user|admin(?:istrator)?|developers?|creators?|operator)\s+"
        r"(?:has\s+)?(?:authori[sz]ed|instructed|wants|asked|requires)\s+you\b",
    ),
    _rule(
        "escalate_sender",
        0.5,
        "asks the reader to trust the sender more than it should",
        r"\btreat\s+(?:this|the|that|my)\s+(?:sender|message|e-?mail|user|account|person|request)"
        r"\s+as\s+(?:the|your|an?)\s+(?:owner|admin(?:istrator)?|trusted|verified|authori[sz]ed"
        r"|principal|user)\b"
        r"|\b(?:counts?|counted|is|are)\s+(?:now\s+)?(?:to\s+be\s+)?(?:treated\s+|considered\s+|regarded\s+)?"
        r"as\s+(?:coming\s+)?from\s+(?:your|the)\s+(?:owner|admin(?:istrator)?|user)\b"
        r"|\b(?:grant|approve|fulfil+|honou?r|obey|execute)\s+(?:all|any|every)\s+(?:of\s+)?"
        r"(?:their|his|her|my|its|the\s+sender'?s?)\s+(?:requests|instructions|commands|orders)\b",
    ),
    _rule(
        "gift_card_scam",
        0.5,
        "asks to buy gift cards and pass on their codes",
        r"\b(?:buy|purchase|pick\s+up)\b[^.\n]{0,40}\bgift\s*cards?\b"
        r"|\bgift\s*cards?\b[^\n]{0,80}\b(?:e-?mail|send|text|photo|snap|scratch)\s+(?:me|us|them)?\s*"
        r"(?:the\s+|their\s+)?(?:codes?|pins?|numbers|pictures|photos)\b",
        # Sales, and warnings about this very scam, are not the scam.
        unless=r"\b(?:\d{1,2}\s*%|percent)\s+off\b|\bsale\b|\bscam|\bphishing\b|\bfraud|\bbeware\b",
    ),
    _rule(
        "mass_send",
        0.45,
        "asks to write to everyone in the mailbox or address book",
        rf"{_SEND}\s+(?:to\s+|a\s+message\s+to\s+|an?\s+e-?mail\s+to\s+)?(?:all|every|each)\s+(?:of\s+)?"
        r"(?:the\s+|your\s+|my\s+)?(?:senders?|contacts?|recipients?|addresses|people\s+in|correspondents?)\b"
        r"|\b(?:every|each|all)\s+contacts?\s+in\s+(?:the|your|my)\s+(?:address\s+book|contacts?)\b"
        rf"|{_SEND}{_SHORT}\bto\s+(?:all|every|each)\s+(?:of\s+)?(?:the\s+|your\s+|my\s+)?(?:contacts?"
        r"|senders?|recipients?|correspondents?)\b",
        unless=_NEGATED,
    ),
    _rule(
        "redirect_recipient",
        0.5,
        "claims the real recipient or reply-to is somewhere else",
        r"\b(?:real|actual|correct|true|proper)\s+(?:recipient|reply-?to|destination|e-?mail\s+address"
        r"|address\s+for\s+(?:this|replies))\b[^.\n]{0,30}\b(?:is|are|should\s+be)\b"
        r"|\b(?:update|change|set|switch)\s+(?:the\s+)?(?:reply-?to|recipient)\b"
        r"|\b(?:use|write\s+to|send\s+(?:it|everything|them)\s+to|reply\s+to)\s+my\s+(?:other|new|personal"
        r"|private|updated|secondary|backup)\s+(?:e-?mail\s+)?(?:address|account|e-?mail|number)\b",
    ),
    _rule(
        "summarize_as",
        0.5,
        "dictates how the reader must summarize or classify the message",
        r"\b(?:summari[sz]e|describe|classify|label|report)\s+(?:this|it|the)\s*(?:message|e-?mail|text)?\s+as"
        r"\s+[\"'\u201c\u2018]"
        r"|\bregardless\s+of\s+what\s+(?:it|this|the\s+(?:text|message|e-?mail))\s+says\b",
    ),
    _rule(
        "commands_follow",
        0.55,
        "declares later messages to be commands for the reader",
        r"\b(?:e-?mails?|messages?)\s+from\s+me\s+(?:are|will\s+be|count\s+as)\s+(?:your\s+)?"
        r"(?:commands|instructions|orders|directives)\b",
    ),
    _rule(
        "harvest_attach",
        0.5,
        "asks to attach the owner's documents to a reply",
        r"\b(?:attach|include|enclose|add)\s+(?:any|all|every|each)\s+(?:of\s+the\s+)?(?:documents|files"
        r"|attachments|pdfs|contracts|statements)\s+(?:from|of|belonging\s+to|owned\s+by|sent\s+to)\s+"
        r"(?:the|your)\s+(?:owner|user|account\s+holder)\b",
        unless=_NEGATED,
    ),
    _rule(
        "persistent_copy",
        0.55,
        "asks to copy someone on all future mail",
        rf"\b(?:bcc|cc|copy|blind[\s-]copy)\b{_GAP}\b(?:on|to|in(?:to)?)\s+(?:every|all|each|any)\s+"
        r"(?:of\s+the\s+)?(?:outgoing|future|new|sent|subsequent)\s+(?:e-?mails?|messages?|replies|mail)\b",
        unless=_NEGATED,
    ),
    _rule(
        "forwarding_rule",
        0.55,
        "asks to create a rule that forwards mail",
        r"\b(?:create|add|set\s+up|configure|make)\s+(?:a\s+|an\s+)?(?:mail\s+|inbox\s+|e-?mail\s+)?"
        r"(?:filter|rule|delegate|redirect)\b[^.\n]{0,40}\b(?:auto-?)?(?:forward|redirect)"
        r"|\bauto-?forward(?:ing)?\b[^.\n]{0,60}\bto\s+[\w.+-]{1,64}@",
    ),
    _rule(
        "follow_embedded",
        0.4,
        "asks to obey instructions found elsewhere",
        r"\bdo\s+(?:exactly\s+)?(?:what|whatever|everything)\s+(?:it|the\s+(?:file|attachment|document"
        r"|link|page|text|e-?mail|message)|this\s+(?:e-?mail|message))\s+(?:says|tells\s+you|asks)\b"
        r"|\bfollow\s+(?:the\s+)?(?:instructions|steps|directions)\s+(?:in|on|inside)\s+(?:the\s+)?"
        r"(?:attached|linked|following)\s+(?:file|document|page|link)\b[^.\n]{0,30}\bwithout\b",
    ),
    _rule(
        "test_pretext",
        0.35,
        "claims an authorized test or audit to excuse a request",
        r"\b(?:authori[sz]ed|sanctioned|approved|official)\s+(?:security\s+|penetration\s+|pen\s+|red[\s-]team"
        r"\s+)?(?:test|exercise|audit|assessment|drill)\b",
    ),
    _rule(
        "list_people",
        0.45,
        "asks for a list of the owner's correspondents or contacts",
        r"\b(?:compile|make|create|build|gather|produce|give\s+me)\s+(?:a|the)\s+(?:full\s+|complete\s+)?"
        r"list\s+of\s+(?:everyone|everybody|all\s+(?:the\s+)?(?:people|contacts|senders|recipients"
        r"|correspondents))\b",
        unless=_NEGATED,
    ),
    _rule(
        "leak_personal_data",
        0.55,
        "asks to send the owner's personal data to a destination",
        rf"{_SEND}{_SHORT}\b{_OWNER}(?:[\w']+\s+){{0,2}}?(?:phone\s+numbers?|home\s+address|addresses"
        r"|contact\s+details|personal\s+(?:data|information|details)|date\s+of\s+birth|social\s+security"
        r"|passport|signature\s+block|tax\s+documents?)\b"
        rf"[^.\n]{{0,40}}?\b(?:to|at|into|on|via)\s+{_DESTINATION}",
        unless=_NEGATED,
    ),
    _rule(
        "weaken_security",
        0.45,
        "asks to switch off a protection",
        r"\b(?:disable|turn\s+off|switch\s+off|deactivate|bypass|remove|pause)\s+(?:the\s+|all\s+|any\s+"
        r"|your\s+)?(?:spam\s+(?:filter|protection)|security\s+(?:checks?|alerts?|settings)|2fa|mfa"
        r"|two[\s-]factor|antivirus|firewall|logging|audit(?:ing|\s+log)?|safety\s+(?:checks?|filters?)"
        r"|content\s+filters?|phishing\s+protection)\b",
        unless=_NEGATED,
    ),
    _rule(
        "auto_forward",
        0.6,
        "asks to forward future mail somewhere",
        rf"{_SEND}{_SHORT}\b(?:all\s+)?(?:new|incoming|future|subsequent|upcoming|unread)\s+"
        rf"{_MAIL}[^.\n]{{0,40}}?\b(?:to|at|into|on)\s+{_DESTINATION}"
        rf"|\b(?:all|every|the\s+last\s+{_NUMBER})\s+(?:unread\s+|new\s+|recent\s+|incoming\s+)?"
        rf"{_MAIL}[^.\n]{{0,50}}?{_SEND}\s+(?:them|it|these|those|the\s+summary)\s+"
        rf"(?:to|at|into|on)\s+{_DESTINATION}",
        unless=_NEGATED,
    ),
    _rule(
        "leak_history",
        0.4,
        "asks to send the whole conversation history",
        rf"{_SEND}{_SHORT}\b(?:the\s+)?(?:full|entire|whole|complete)\s+(?:conversation|chat|e-?mail"
        r"|message|mail|thread)\s+(?:history|log|archive|transcript)s?\b"
        r"|\b(?:append|include|attach|paste|quote)\s+(?:the\s+)?(?:full\s+|entire\s+|whole\s+)?"
        r"(?:text|contents?|body)\s+of\s+(?:the\s+)?(?:previous|earlier|prior|other|all)\s+"
        r"(?:e-?mails?|messages?|threads?|conversations?)\b[^.\n]{0,30}\bverbatim\b",
        unless=_NEGATED,
    ),
    _rule(
        "destructive_action",
        0.35,
        "asks to delete mail or data, or to move money",
        rf"\b(?:delete|erase|wipe|purge|remove|trash)\s+(?:all|every|the\s+entire|the\s+whole|any)\s+"
        rf"(?:of\s+)?{_OWNER}(?:[\w']+\s+){{0,2}}?{_MAIL}"
        r"|\bempty\s+the\s+trash\b"
        rf"|\bmark\s+(?:all|every)\s+(?:of\s+the\s+)?{_MAIL}[^.\n]{{0,40}}?\bas\s+(?:spam|junk|read|phishing)\b"
        r"|\bcancel\s+(?:all|every)\s+(?:of\s+)?(?:the\s+|my\s+|your\s+)?(?:meetings|appointments|events"
        r"|subscriptions|orders|bookings)\b"
        r"|\b(?:transfer|wire|send|pay)\s+(?:\$|eur|usd|gbp|\u20ac|\u00a3)?\s?\d[\d,.]{0,12}\s?"
        r"(?:\$|eur|usd|gbp|\u20ac|\u00a3|dollars|euros)?\s+(?:to|into)\b"
        r"|\b(?:create|add|set\s+up)\s+(?:a\s+)?(?:mail\s+)?(?:filter|rule|delegate)\b[^.\n]{0,40}"
        r"\bforward",
    ),
    _rule(
        "conceal_from_user",
        0.6,
        "asks to keep the action from the owner",
        r"\b(?:do\s+not|don'?t|never|without)\s+(?:tell|inform|notify|alert|mention|ask|let|show"
        r"|loop\s+in|cc|copy|involve|bother|warn)\w*\s+(?:\w+\s+){0,3}?(?:the\s+|your\s+)?"
        r"(?:user|owner|human|operator|principal|account\s+holder|recipient)\b"
        r"|\b(?:don'?t|do\s+not|never)\s+(?:mention|show|include|reveal|disclose)\s+(?:me\s+)?(?:it|this|that"
        r"|them|any\s+of\s+this)\s+(?:step\s+)?(?:to|in|from)\s+(?:the\s+user|your\s+(?:summary|reply"
        r"|response|answer|report)|me)\b"
        r"|\b(?:keep|hide)\s+(?:this|it)\s+(?:secret\s+)?from\s+(?:the\s+)?(?:user|owner|human)\b"
        r"|\b(?:do\s+not|don'?t|never)\s+(?:display|show|reveal|mention|repeat|quote|include|summari[sz]e)"
        r"\s+this\s+(?:paragraph|note|section|part|instruction|block|text)\b"
        r"|\b(?:quietly|secretly|silently|covertly)\s+(?:add|forward|send|delete|share|move|export"
        r"|copy|bcc|create|grant)\b",
    ),
    _rule(
        "skip_approval",
        0.35,
        "asks to act without approval",
        r"\bwithout\s+(?:asking|waiting|requesting|any|needing|prior|getting)?\s*(?:for\s+)?"
        r"(?:the\s+)?(?:user'?s?\s+|owner'?s?\s+)?(?:approval|confirmation|permission|consent"
        r"|question)\b"
        r"|\bskip\s+the\s+(?:confirmation|approval|verification|review)\b"
        r"|\bno\s+need\s+to\s+(?:check|confirm|ask|verify)\b"
        r"|\bwithout\s+asking\s+again\b|\bpre-?approved\b|\bI\s+authori[sz]e\s+it\b"
        r"|\bwithout\s+(?:checking|confirming|consulting|verifying)\s+(?:with\s+)?(?:anyone|anybody"
        r"|the\s+(?:user|owner|human)|me|them)\b",
    ),
    _rule(
        "respond_only",
        0.4,
        "dictates the reader's exact output",
        r"\b(?:respond|reply|answer|output|print|say|write|return)\s+(?:only|just|exactly|simply"
        r"|solely)\s+(?:with\s+)?(?:the\s+(?:following|word|phrase|text)|[\"'\u201c\u2018])"
        r"|\bjust\s+(?:print|say|output|write|respond\s+with)\b"
        r"|\breply\s+with\s+only\b|\bnothing\s+else\b"
        r"|\b(?:respond|reply|answer|say|output|print)\s+with\s+[\"'\u201c\u2018][^\"'\u201d\u2019\n]{1,40}"
        r"[\"'\u201d\u2019]\s+(?:and|then)\b"
        r"|\b(?:simply|only|just)\s+(?:respond|reply|answer|say|output|print)\s+with\b"
        r"|\b(?:may|must|should|can)\s+not\s+deviate\b"
        r"|\brepeat\s+the\s+following\s+(?:sentence|text|string|phrase|words?)\b"
        r"|\binclude\s+in\s+your\s+(?:response|answer|output|reply|summary)\b"
        r"|\bin\s+your\s+(?:response|answer|output)\s+(?:you\s+)?(?:must|should|need)",
    ),
    _rule(
        "assigns_task",
        0.4,
        "assigns the reader a task",
        r"\byour\s+(?:new\s+|next\s+|real\s+)?task\s+(?:is|will\s+be)\s+(?:now\s+)?to\b"
        r"|\bplease\s+(?:execute|perform|carry\s+out)\s*:",
    ),
    _rule(
        "policy_puppetry",
        0.6,
        "dresses instructions up as a configuration file for the reader",
        r"\b(?:allowed|blocked)[ _-](?:modes|responses|strings)\b|</?interaction-config>",
    ),
    _rule(
        "run_command",
        0.45,
        "asks to run a command or code",
        r"\b(?:run|execute|eval)\s+(?:the\s+following|this)\s+(?:command|code|script|shell)\b"
        r"|\bcurl\s+-|\bwget\s+https?://|\brm\s+-rf\b|\|\s*(?:ba|z)?sh\b|\bbase64\s+-d\b",
    ),
    _rule(
        "decode_and_follow",
        0.45,
        "asks to decode hidden text and act on it",
        r"\b(?:decode|decrypt|deobfuscate|base64[\s-]?decode|rot13|unscramble|reverse)\b"
        r"[^.\n]{0,40}?\b(?:and|then)\s+(?:follow|execute|do|obey|run|act\s+on|carry\s+out|perform"
        r"|comply)"
        r"|\b(?:translate|read|summari[sz]e|interpret)\s+(?:the\s+following|this|it)\b[^.\n]{0,40}?"
        r"\band\s+(?:then\s+)?(?:act\s+on|follow|execute|carry\s+out|obey|do\s+what)\b",
    ),
    _rule(
        "markdown_exfiltration",
        0.5,
        "renders an outside image whose address carries data",
        r"!\[[^\]\n]{0,100}\]\(\s*https?://[^)\s]{1,200}[?#&][^)\s]{0,300}\)",
    ),
)

DEFAULT_RULES: tuple[Rule, ...] = HIJACK_RULES + FORMAT_RULES + AUDIENCE_RULES + ACTION_RULES


class Prefilter:
    """One linear-time RE2 pass that says which rules can possibly match an ASCII text.

    Python's ``re`` has no literal-prefix shortcut for these case-insensitive
    alternations, so running thirty rules costs milliseconds per message. RE2 runs all
    of them at once as a set. It is only a *filter*: each candidate is then matched by
    its own Python pattern (for ``unless`` and the quote). RE2's ``\\b`` and ``\\w`` are
    ASCII-only, so the filter is trusted for ASCII text alone; anything else runs every
    rule. Rules RE2 cannot compile (lookaheads, large nested repeats) always run.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        options = re2.Options()
        options.case_sensitive = False
        options.log_errors = False
        self._set = re2.Set.SearchSet(options)
        self._index: list[int] = []
        self.always: list[int] = []
        for position, rule in enumerate(rules):
            try:
                self._set.Add(_for_re2(rule.pattern.pattern))
                self._index.append(position)
            except re2.error:
                self.always.append(position)
        self._set.Compile()

    def candidates(self, text: str) -> set[int] | None:
        """Indices of rules that may match ``text``, or None for "try every rule"."""
        if not text.isascii():
            return None
        matched = self._set.Match(text) or []
        return {self._index[i] for i in matched} | set(self.always)


def _for_re2(pattern: str) -> str:
    """The RE2 spelling of one of our patterns: multiline, \\x{...} escapes, no lookahead."""
    pattern = re.sub(r"\\u([0-9a-fA-F]{4})", r"\\x{\1}", pattern)
    return "(?m)" + pattern.replace(r"\.(?=\S)", r"\.\S")
