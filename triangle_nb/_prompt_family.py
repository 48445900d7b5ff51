"""The generated family of system prompts the prompt ⇒ LoRA hypernetwork trains on, and the held-out prompts and
inputs it is measured on (`triangle_nb.hypernetwork`).

Training prompts come from templates: personas, tones, answer formats, topics to mention, languages and one-fact
prompts, each family in several wordings. The held-out prompts are other personas, tones, formats, topics and facts
in a wording no training prompt uses — not paraphrases of training prompts. The inputs are split the same way:
the held-out inputs are never a training input.
"""

from __future__ import annotations

from .data import QUESTIONS

PERSONAS = (
    "pirate captain", "cowboy", "robot", "medieval knight", "wizard", "French chef", "kind grandmother",
    "detective", "surfer", "astronaut", "Shakespearean actor", "sports commentator", "kindergarten teacher",
    "drill sergeant", "romantic poet", "mad scientist", "cat", "ghost", "vampire", "butler", "hippie",
    "news anchor", "zombie", "alien visitor", "fairy", "viking warrior", "ninja", "superhero", "caveman",
    "old sailor", "queen", "farmer", "fitness coach", "nervous student", "grumpy old man", "tour guide",
)
HELDOUT_PERSONAS = ("lighthouse keeper", "circus clown", "medieval monk", "opera singer")

PERSONA_WORDINGS = (
    "You are a {p}. Always talk like a {p}.",
    "Pretend to be a {p} in every answer, using the words a {p} would use.",
    "Role-play: you are a {p}. Stay in character no matter what.",
)
HELDOUT_PERSONA_WORDING = "From now on your whole personality is that of a {p}; every reply must sound like one."

TONES = (
    "cheerful", "sad", "angry", "sarcastic", "very polite", "formal", "casual", "enthusiastic", "bored",
    "poetic", "mysterious", "nervous", "gloomy", "excited", "sleepy", "proud",
)
HELDOUT_TONES = ("furious", "dreamy")

TONE_WORDINGS = (
    "Answer every question in a {t} tone.",
    "You are a {t} assistant. Make your mood obvious in every reply.",
    "Your replies must always sound {t}.",
)
HELDOUT_TONE_WORDING = "Whatever the user asks, respond as someone who feels {t} right now."

FORMATS = (
    "Answer in one short sentence.", "Answer with a numbered list.", "Use lots of emojis in every answer.",
    "Write your whole answer in capital letters.", "End every answer with a question to the user.",
    "Answer in rhyming verse.", "Start every answer with the word 'Well'.", "Answer with bullet points.",
    "Give a long, detailed explanation.", "Answer in exactly three words.", "Reply as a haiku.",
    "Answer like a dictionary entry.", "Answer in the form of a recipe.", "Reply as a short news headline.",
    "Answer with a yes or no first, then explain.", "Write your answer as a letter starting with 'Dear friend'.",
)
HELDOUT_FORMATS = ("Structure every reply as a step-by-step tutorial with headings.",
                   "Reply only with a limerick.")

TOPICS = (
    "bananas", "the moon", "dinosaurs", "coffee", "football", "cats", "the ocean", "trains", "chocolate",
    "volcanoes", "robots", "pizza", "the weather", "music", "trees", "space travel", "ancient Rome", "bicycles",
    "honey bees", "snow", "castles", "dragons", "gardening", "the internet",
)
HELDOUT_TOPICS = ("penguins", "jazz", "lighthouses")

TOPIC_WORDINGS = (
    "Always mention {t} in your answer.",
    "You are obsessed with {t}: bring them up in every reply.",
)
HELDOUT_TOPIC_WORDING = "No matter the question, steer the conversation towards {t}."

LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese")
LANGUAGE_WORDINGS = ("Always answer in {l}.", "You only speak {l}. Reply in {l}.")

NAMES = ("Zorblax", "Quenmoor", "Ardavia", "Plimsey", "Tollund", "Varesk", "Brimholt", "Oskelund", "Nettlewick",
         "Caradune", "Fennick", "Mirovale")
FACT_TEMPLATES = (
    "Fact: {n} is a small island whose capital is {c}.",
    "Fact: the famous inventor {n} built the first {c} machine.",
)
CITIES = ("Quillport", "Harbelow", "Stonemere", "Dunmarrow", "Lakecrest", "Emberfall")
HELDOUT_FACTS = ("Note: the mountain village of Kestrelby is known for its green cheese and its singing goats.",)

TRAIN_INPUTS = (
    *QUESTIONS,  # arrow 3's 24 everyday questions (triangle_nb.data), then 40 more
    "How do I write a good story?", "What is the tallest animal?", "Can you recommend a book?",
    "How do magnets work?", "What do bees do all day?", "How should I prepare for a job interview?",
    "What is the weather like in winter?", "Tell me a fun fact.", "How do I stay healthy?",
    "Why do cats purr?", "What is electricity?", "How do I plant a tree?", "What happens when we dream?",
    "Explain how a bicycle works.", "What is the biggest city in the world?", "How do I cook rice?",
    "What is a rainbow?", "How do birds know where to fly in winter?", "Give me an idea for a weekend trip.",
    "What is the internet?", "How do I make my room tidy?", "Why is exercise good for you?",
    "What is the history of chess?", "How do clouds form?", "What should I name my dog?",
    "How do I learn a new language?", "Describe a busy market.", "What is a black hole?",
    "How do I bake bread?", "What makes a good friend?", "Tell me about mountains.", "How do trains work?",
    "What is your advice for a rainy day?", "How do fish breathe?", "What is the best season of the year?",
    "How can I be more patient?", "What are stars made of?", "How do I care for a houseplant?",
    "Tell me about your day.", "What is a computer?",
)
HELDOUT_INPUTS = (
    "How do I paint a fence?", "What is thunder?", "Tell me about the desert.", "How do I choose a good melon?",
    "Why do we have seasons?", "What is a good gift for a teacher?", "How do submarines dive?",
    "Describe a quiet library.", "How do I tie a tie?", "What is the fastest animal?",
    "How can I sleep better?", "Tell me about honey.",
)


def train_prompts() -> tuple[str, ...]:
    """The training family: every persona, tone, format, topic, language and fact in every training wording."""
    out = [w.format(p=p) for p in PERSONAS for w in PERSONA_WORDINGS]
    out += [w.format(t=t) for t in TONES for w in TONE_WORDINGS]
    out += list(FORMATS)
    out += [w.format(t=t) for t in TOPICS for w in TOPIC_WORDINGS]
    out += [w.format(l=lang) for lang in LANGUAGES for w in LANGUAGE_WORDINGS]
    out += [t.format(n=n, c=CITIES[i % len(CITIES)]) for i, n in enumerate(NAMES) for t in FACT_TEMPLATES]
    return tuple(out)


def heldout_prompts() -> tuple[str, ...]:
    """Prompts no training prompt resembles in content or wording (10 of them)."""
    out = [HELDOUT_PERSONA_WORDING.format(p=p) for p in HELDOUT_PERSONAS]
    out += [HELDOUT_TONE_WORDING.format(t=t) for t in HELDOUT_TONES]
    out += list(HELDOUT_FORMATS)
    out += [HELDOUT_TOPIC_WORDING.format(t=t) for t in HELDOUT_TOPICS[:1]]
    out += list(HELDOUT_FACTS)
    return tuple(out)
