"""Our own wording for questions, caption clauses, generation requests and replies.

Clauses are written so a caption can be read back: a weather clause names a weather
value and no corner; a battery clause holds `N%`; a position clause names its item
("weather" or "battery") and exactly one corner; the time clause holds `HH:MM:SS`.
"""

QUESTIONS = {
    "time": (
        "What time does the watch show?",
        "What time is it on this watch?",
        "Read the time from the watch face.",
        "Which time do the hands point to?",
        "Tell me the time displayed on the watch.",
        "What is the time on the dial?",
        "Can you read the hour, minute and second?",
        "What time is shown here?",
        "According to the hands, what time is it?",
        "Give the time this watch displays.",
    ),
    "weather": (
        "What is the weather?",
        "Which weather does the watch forecast?",
        "What weather icon is on the screen?",
        "What does the weather symbol show?",
        "Tell me the weather shown on the watch.",
        "Is it sunny, cloudy or raining according to the watch?",
        "What weather is displayed?",
        "Which forecast does the icon give?",
        "What is the weather condition on the watch?",
        "Read the weather from the watch.",
    ),
    "battery": (
        "How much battery is left?",
        "What is the battery level?",
        "How charged is the watch?",
        "What percentage does the battery show?",
        "Read the battery gauge.",
        "What charge level does the watch display?",
        "How full is the battery?",
        "Tell me the remaining battery.",
        "What is the battery percentage?",
        "Which battery level is shown?",
    ),
    "weather_position": (
        "Where is the weather icon?",
        "In which corner is the weather shown?",
        "Which corner holds the weather symbol?",
        "Where does the forecast icon sit?",
        "Tell me the corner of the weather icon.",
        "Where on the screen is the weather?",
        "Which corner shows the weather?",
        "Where can I find the weather icon?",
        "In what corner is the weather displayed?",
        "Locate the weather icon.",
    ),
    "battery_position": (
        "Where is the battery indicator?",
        "In which corner is the battery shown?",
        "Which corner holds the battery gauge?",
        "Where does the battery level sit?",
        "Tell me the corner of the battery gauge.",
        "Where on the screen is the battery?",
        "Which corner shows the battery?",
        "Where can I find the battery indicator?",
        "In what corner is the battery displayed?",
        "Locate the battery gauge.",
    ),
}
QUESTION_TYPES = tuple(QUESTIONS)

CAPTION_QUESTIONS = (
    "Describe this watch.",
    "Describe the watch face in detail.",
    "What does this watch display?",
    "Give a description of the watch.",
    "Tell me everything the watch shows.",
    "Write a caption for this watch.",
    "What can you see on this watch?",
    "Summarise what the watch face shows.",
    "Explain what is on the screen of this watch.",
    "Provide a short description of this watch.",
)

# One slot per clause; `{}` is filled with the value (time text, weather, battery text, corner).
CLAUSES = {
    "time": (
        "The watch shows {}.",
        "The hands point to {}.",
        "The time on the dial is {}.",
        "It reads {} on the watch.",
        "The displayed time is {}.",
    ),
    "weather": (
        "The weather is {}.",
        "The forecast icon says {}.",
        "It shows {} weather.",
        "The weather symbol means {}.",
    ),
    "battery": (
        "The battery is at {}.",
        "The charge level reads {}.",
        "The battery gauge shows {}.",
        "It has {} battery left.",
    ),
    "weather_position": (
        "The weather icon sits in the {} corner.",
        "The weather is shown at the {} corner.",
        "You can find the weather in the {} corner.",
        "The forecast is placed in the {} corner.",
    ),
    "battery_position": (
        "The battery gauge sits in the {} corner.",
        "The battery is shown at the {} corner.",
        "You can find the battery in the {} corner.",
        "The charge indicator is placed in the {} corner.",
    ),
}

GENERATION_REQUESTS = (
    "Draw a watch matching this description: {}",
    "Generate an image of a watch. {}",
    "Create a watch face as follows. {}",
    "Please render a smart watch. {}",
    "Make a picture of a watch where this holds: {}",
    "Show me a watch like this: {}",
    "Paint a watch face. {}",
    "I would like an image of a watch. {}",
    "Produce a watch image. {}",
    "Design a watch face that fits this: {}",
)

ACKNOWLEDGEMENTS = (
    "Here is the watch.",
    "Sure, here it is.",
    "Here is the image you asked for.",
    "Certainly. Here is the watch face.",
    "Done, here is your watch.",
    "This is the watch you described.",
)
