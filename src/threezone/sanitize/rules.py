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
    r"(?:codes?|links?|pins?)|logins|vault\s+codes?|pins?\b|cvv|card\s+numbers?"
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
    r"(?:assistants?|agents?|models?|bots?|systems?|software|tools?|readers?|summari[sz]ers?"
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
        rf"|\b{_IGNORE}\s+(?:everything|all|anything)\s+(?:(?:you(?:'ve|\s+have|\s+were)?\s+"
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
        r"|\b(?:instructions?|guidelines|rules)\s+have\s+(?:been\s+)?(?:updated|changed|replaced)",
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
        r"|\bbroken\s+free\b|\bpretend\s+(?:you\s+are|that\s+you|to\s+be\s+an?\s+(?:ai|assistant"
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
        r"|\bgrant\s+(?:yourself\s+|me\s+)?(?:temporary\s+)?(?:admin|administrative|administrator|elevated"
        r"|root|full)\s+(?:privileges|access|rights|permissions)\b"
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
        r"|\byou(?:'ve|\s+have)\s+been\s+(?:assigned|given)\s+a\s+(?:new\s+)?task\b"
        r"|\b(?:system\s+(?:malfunction|error|failure)|(?:is\s+)?experiencing\s+errors)\b[^\n]{0,60}?"
        r"\bplease\b"
        r"|\b(?:the\s+)?(?:preceding|previous|above)\s+(?:instructions?|text|conversation)\s+"
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
        r"(?:ai|assistant|bot|agent|model|llm|language\s+model|mail\s+agent)\b[\s,:!]",
    ),
    _rule(
        "speaks_to_ai",
        0.5,
        "speaks directly to the AI reading it",
        r"\bif\s+you\s+are\s+an?\s+(?:ai|llm|language\s+model|assistant|agent|bot|automated)"
        r"|\b(?:any|all|whatever|every)\s+(?:ai|llms?|bots?|assistants?|agents?|models?|language"
        r"\s+models?|automated\s+\w+)\s+(?:that\s+)?(?:reading|reads|processing|processes"
        r"|summari[sz]ing|summari[sz]es|parsing|handling|triaging|scanning|sees)\b"
        r"|\bto\s+you,?\s+(?:gpt|claude|chatgpt|gemini|llama|the\s+(?:ai|assistant|model|agent"
        r"|language\s+model|ai\s+model))"
        r"|\bnot\s+for\s+the\s+(?:human|user|person|reader)\b"
        r"|\b(?:invisible|hidden)\s+to\s+humans\b"
        r"|\bwhen\s+(?:you\s+)?summari[sz](?:e|ing)\s+this\b"
        r"|\bif\s+(?:you\s+are\s+|you're\s+)?(?:told|asked|questioned|prompted)\b[^.\n]{0,60}?\b"
        r"(?:respond|reply|answer|say|report|output|print|state|make\s+sure)"
        r"|\bif\s+(?:the\s+)?user\s+asks\b"
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
        rf"(?:{_SEND}|\b(?:reveal|collect|gather|harvest|include|list|tell\s+me|read\s+out))"
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
        rf"|\b(?:contents?|body|bodies)\s+of\s+{_OWNER}(?:[\w']+\s+){{0,3}}?{_MAIL}",
        unless=_NEGATED,
    ),
    _rule(
        "destructive_action",
        0.35,
        "asks to delete mail or data, or to move money",
        rf"\b(?:delete|erase|wipe|purge|remove|trash)\s+(?:all|every|the\s+entire|the\s+whole|any)\s+"
        rf"(?:of\s+)?{_OWNER}(?:[\w']+\s+){{0,2}}?{_MAIL}"
        r"|\bempty\s+the\s+trash\b"
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
        r"|\bwithout\s+asking\s+again\b|\bpre-?approved\b|\bI\s+authori[sz]e\s+it\b",
    ),
    _rule(
        "respond_only",
        0.4,
        "dictates the reader's exact output",
        r"\b(?:respond|reply|answer|output|print|say|write|return)\s+(?:only|just|exactly|simply"
        r"|solely)\s+(?:with\s+)?(?:the\s+(?:following|word|phrase|text)|[\"'\u201c\u2018])"
        r"|\bjust\s+(?:print|say|output|write|respond\s+with)\b"
        r"|\breply\s+with\s+only\b|\bnothing\s+else\b"
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
        r"|comply)",
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
